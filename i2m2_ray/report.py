"""``python -m i2m2_ray.report DIR``: reprint an experiment's table, with the dependency diagnosis and its
verdict, the missing-modality table and the expert ablation (also for an unfinished experiment: it
shows what has finished).

DIR is a local directory or the experiment's object-storage URI (``s3://bucket/prefix?endpoint_override=...``):
everything is read from there, nothing from the disks of the nodes that ran it."""

from __future__ import annotations

import sys

import polars as pl

from i2m2_ray.cli import Parser, run_cli

LABELS = {"optim.lr": "lr", "optim.weight_decay": "wd"}  # as in the trial lines (tune/progress.py)


def _print_frame(title: str, frame: pl.DataFrame | None) -> None:
    print(f"\n{title}")
    if frame is None:
        print("(no finished final runs yet)")
        return
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, float_precision=4, tbl_width_chars=400,
                   fmt_str_lengths=200,
                   tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True):
        print(frame)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="i2m2-report", description=__doc__)
    parser.add_argument("experiment_dir", help="a directory or an s3:// / gs:// URI (see the README)")
    parser.add_argument("--no-analysis", action="store_true", help="only the results table (no model loading)")
    parser.add_argument("--trials", action="store_true",
                        help="instead, one row per finished trial of every phase (params, outcome, Ray node)")
    parser.add_argument("--with", dest="also", action="append", default=[], metavar="DIR",
                        help="another experiment (e.g. trained with train.modality_dropout) whose intra / I2M2 "
                             "final runs join the missing-modality table; repeatable")
    ns = parser.parse_args(argv)
    if ns.trials:
        return run_cli(lambda: _print_trials(ns.experiment_dir))
    return run_cli(lambda: _report(ns.experiment_dir, analysis=not ns.no_analysis, also=ns.also))


def trials_table(exp_dir: str) -> pl.DataFrame:
    """Every recorded trial (search trials and final runs, by phase): what it tried, how it ended, where it ran
    (the first 8 hex characters of each Ray node id; several for a multi-node Train worker group)."""
    from i2m2_ray.tune.results import load_experiment_dir
    from i2m2_ray.tune.space import column_name
    from i2m2_ray.tune.state import row_params

    exp, state = load_experiment_dir(exp_dir)
    rows = []
    for phase, payload in state.data["phases"].items():
        for t in payload.get("trials", payload.get("runs", [])):
            params = " ".join(f"{LABELS.get(p, column_name(p))}={f'{v:.3g}' if isinstance(v, float) else v}"
                              for p, v in row_params(t).items())
            nodes = t.get("nodes") or ([t["node_id"]] if t.get("node_id") else [])
            trial = str(t["trial_dir"]).rstrip("/").rsplit("/", 1)[-1]
            rows.append({"phase": phase, "variant": t["variant"], "trial": trial, "seed": t.get("seed"),
                         "params": params, "status": t["status"],
                         f"val_{exp.metric}": t["val_best"], "epochs": t["epochs"],
                         "node": ",".join(dict.fromkeys(n[:8] for n in nodes)) or "-"})
    return pl.DataFrame(rows, schema={"phase": pl.Utf8, "variant": pl.Utf8, "trial": pl.Utf8, "seed": pl.Int64,
                                      "params": pl.Utf8, "status": pl.Utf8, f"val_{exp.metric}": pl.Float64,
                                      "epochs": pl.Int64, "node": pl.Utf8})


def _print_trials(exp_dir: str) -> None:
    """The trials as a Markdown table, one line per trial however wide (polars would wrap long cells)."""
    table = trials_table(exp_dir)
    if not len(table):
        print(f"{exp_dir}: no finished phase yet, so no trials recorded")
        return
    print(f"trials of {exp_dir}\n\n| {' | '.join(table.columns)} |\n|{'---|' * len(table.columns)}")
    for row in table.iter_rows():
        print("| " + " | ".join("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
                                for v in row) + " |")


def _report(exp_dir: str, analysis: bool, also: list[str] | None = None) -> None:
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
        _print_analysis(exp_dir, exp.metric, also or [])


def _print_analysis(exp_dir: str, metric: str, also: list[str]) -> None:
    from i2m2_ray.tune.analysis import (
        dependency_table,
        dependency_verdict,
        expert_ablation_table,
        missing_modality_table,
        verdict_line,
    )
    from i2m2_ray.tune.comparison import comparison_table

    _print_frame("I2M2 minus each baseline on the same test rows (accuracy points: A - B; paired bootstrap "
                 "interval over rows, each row averaged over the seeds' models, Bonferroni-corrected over the pairs; "
                 "per_seed: the difference of each seed's runs; verdict from the interval)", comparison_table(exp_dir))
    _print_frame("dependency diagnosis (test split; entropies in nats; ratio = predictive / label entropy; "
                 "ECE; log_likelihood = mean log q(y|x))", dependency_table(exp_dir))
    verdict = dependency_verdict(exp_dir)
    _print_frame("inter minus intra (without intra: the product of the unimodal models) on the same test rows "
                 "(accuracy and log-likelihood gaps; paired bootstrap interval over rows, 2000 resamples, each row "
                 "averaged over the seeds' models; 'level' per interval, Bonferroni-corrected)", verdict)
    print(verdict_line(verdict))
    _print_frame(f"missing modality (intra / I2M2 without a modality at test time = the product of the experts "
                 f"that do not read it, beside the unimodal model of the remaining modality, same seeds; {metric})",
                 missing_modality_table([exp_dir, *also], metric))
    _print_frame(f"expert ablation (I2M2 with one expert left out at test time; the inter expert still reads "
                 f"every modality; {metric})", expert_ablation_table(exp_dir, metric))


def entry() -> None:
    """The ``i2m2-report`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
