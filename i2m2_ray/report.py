"""``python -m i2m2_ray.report DIR``: reprint an experiment's table, with the dependency diagnosis and
the missing-modality table (also for an unfinished experiment: it shows what has finished)."""

from __future__ import annotations

import argparse
import sys

import polars as pl


def _print_frame(title: str, frame: pl.DataFrame | None) -> None:
    print(f"\n{title}")
    if frame is None:
        print("(no finished final runs yet)")
        return
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, float_precision=4,
                   tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True):
        print(frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m i2m2_ray.report", description=__doc__)
    parser.add_argument("experiment_dir")
    parser.add_argument("--no-analysis", action="store_true", help="only the results table (no model loading)")
    ns = parser.parse_args(argv)
    from i2m2_ray.errors import I2M2Error

    try:
        from i2m2_ray.tune.results import load_experiment_dir, render_markdown, results_table

        exp, _ = load_experiment_dir(ns.experiment_dir)
        table = results_table(ns.experiment_dir)
        print(f"experiment {exp.name!r} ({ns.experiment_dir}): metric {exp.metric}, "
              f"seeds {exp.final.seeds}\n")
        print(render_markdown(table))
        pending = table.filter(pl.col("status") != "done")["variant"].to_list()
        if pending:
            print(f"\nnot finished: {', '.join(pending)}")
        if not ns.no_analysis:
            from i2m2_ray.tune.analysis import dependency_table, missing_modality_table

            _print_frame("dependency diagnosis (test split; entropies in nats; ratio = predictive / label entropy)",
                         dependency_table(ns.experiment_dir))
            _print_frame(f"missing modality (I2M2 with one expert left out at test time; {exp.metric})",
                         missing_modality_table(ns.experiment_dir, exp.metric))
    except I2M2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
