"""``python -m i2m2_ray.report DIR``: reprint an experiment's table, with the dependency diagnosis and
the missing-modality table (also for an unfinished experiment: it shows what has finished).

DIR is a local directory or the experiment's object-storage URI (``s3://bucket/prefix?endpoint_override=...``):
everything is read from there, nothing from the disks of the nodes that ran it."""

from __future__ import annotations

import sys

import polars as pl

from i2m2_ray.cli import Parser, run_cli


def _print_frame(title: str, frame: pl.DataFrame | None) -> None:
    print(f"\n{title}")
    if frame is None:
        print("(no finished final runs yet)")
        return
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, float_precision=4,
                   tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True):
        print(frame)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="i2m2-report", description=__doc__)
    parser.add_argument("experiment_dir", help="a directory or an s3:// / gs:// URI (see the README)")
    parser.add_argument("--no-analysis", action="store_true", help="only the results table (no model loading)")
    ns = parser.parse_args(argv)
    return run_cli(lambda: _report(ns.experiment_dir, analysis=not ns.no_analysis))


def _report(exp_dir: str, analysis: bool) -> None:
    from i2m2_ray.storage import open_storage
    from i2m2_ray.tune.results import load_experiment_dir, render_markdown, results_table

    storage = open_storage(exp_dir)
    storage.check()
    exp, _ = load_experiment_dir(storage)
    table = results_table(storage)
    print(f"experiment {exp.name!r} ({exp_dir}): metric {exp.metric}, seeds {exp.final.seeds}\n")
    print(render_markdown(table))
    pending = table.filter(pl.col("status") != "done")["variant"].to_list()
    if pending:
        print(f"\nnot finished: {', '.join(pending)}")
    if analysis:
        from i2m2_ray.tune.analysis import dependency_table, missing_modality_table

        _print_frame("dependency diagnosis (test split; entropies in nats; ratio = predictive / label entropy)",
                     dependency_table(storage))
        _print_frame(f"missing modality (I2M2 with one expert left out at test time; {exp.metric})",
                     missing_modality_table(storage, exp.metric))


def entry() -> None:
    """The ``i2m2-report`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
