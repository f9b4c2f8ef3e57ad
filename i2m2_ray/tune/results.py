"""The comparison table: one row per variant, read from the experiment's ``state.json``.

Works on unfinished experiments too: variants whose phases have not finished show
what is known (search result without test numbers, or nothing).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import polars as pl

from i2m2_ray.errors import ConfigError, I2M2Error
from i2m2_ray.storage import Storage, open_storage
from i2m2_ray.train.config import TrainConfig
from i2m2_ray.tune.experiment import ExperimentConfig, experiment_from_dict
from i2m2_ray.tune.space import column_name, field_type
from i2m2_ray.tune.state import (
    EXPERIMENT_FILE,
    FINAL,
    FINAL_STAGE2,
    TABLE,
    ExperimentState,
    row_params,
    slug,
)

# Markdown headers of searched columns that differ from the column name.
HEADERS = {"weight_decay": "wd"}


def load_experiment_dir(exp_dir: str | Path | Storage) -> tuple[ExperimentConfig, ExperimentState]:
    """The experiment and its ledger, from a local directory or object storage (see storage.py)."""
    storage = open_storage(exp_dir)
    path = storage.location(EXPERIMENT_FILE)
    if not storage.is_file(EXPERIMENT_FILE):
        raise ConfigError(f"{storage}: not an experiment directory (no {EXPERIMENT_FILE})")
    try:
        exp = experiment_from_dict(storage.read_yaml(EXPERIMENT_FILE))
    except ConfigError as exc:
        raise ConfigError(str(exc) if path in str(exc) else f"{path}: {exc}") from None
    return exp, ExperimentState(storage)


def _dtype(path: str) -> pl.DataType:
    kind = field_type(TrainConfig, path)
    return {float: pl.Float64, int: pl.Int64, bool: pl.Boolean}.get(kind, pl.Utf8)


def _cell(value: Any, dtype: pl.DataType) -> Any:
    if value is None or dtype != pl.Utf8:
        return value
    return str(value)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _final_runs(state: ExperimentState, variant: str) -> tuple[list[dict[str, Any]], float]:
    """The variant's final runs and its share of their phase's wall time, from whichever final phase holds
    them (``final`` or ``final-stage2``; an earlier version's single ``final`` held every variant)."""
    for name in (FINAL, FINAL_STAGE2):
        phase = state.phase(name)
        runs = [r for r in (phase or {}).get("runs", []) if r["variant"] == variant]
        if runs:
            return runs, phase["wall_s"] * len(runs) / len(phase["runs"])
    return [], 0.0


def bayes_accuracy(exp: ExperimentConfig) -> float | None:
    """The Bayes-optimal test accuracy the dataset's manifest records (the built-in generator computes
    it exactly), or None (real datasets; a dataset no longer there)."""
    from i2m2_ray.data.dataset import resolve_dataset
    from i2m2_ray.data.format import load_manifest

    try:
        return load_manifest(resolve_dataset(exp.dataset)).bayes_accuracy
    except I2M2Error:
        return None


def results_table(exp_dir: str | Path | Storage) -> pl.DataFrame:
    """Best validation metric, test mean and sample std over seeds, the best value of every searched path
    (``lr`` / ``weight_decay`` for the optimiser's, dotted names for the rest), trials, failed trials,
    epochs, time, and the dataset's Bayes-optimal accuracy where its manifest has one (the ceiling)."""
    exp, state = load_experiment_dir(exp_dir)
    bayes = bayes_accuracy(exp)
    m = exp.metric
    searched = {column_name(p): (p, _dtype(p)) for p in exp.searched_paths()}
    rows = []
    for variant in exp.variants:
        search = state.phase(f"search-{slug(variant)}")
        runs, final_wall = _final_runs(state, variant)
        stage = 1 if variant.split(":")[0] in ("unimodal", "inter") else 2
        row: dict[str, Any] = {"variant": variant, "stage": stage, f"val_{m}": None,
                               f"test_{m}_mean": None, f"test_{m}_std": None, "seeds": 0,
                               **{c: None for c in searched}, "trials": 0, "failed": 0, "epochs": 0,
                               "wall_s": 0.0, "status": "pending", "bayes_accuracy": bayes}
        if search:
            best = search["best"]
            params = row_params(best)
            row.update({c: _cell(params.get(p), dtype) for c, (p, dtype) in searched.items()})
            row.update({f"val_{m}": best["val_best"], "trials": len(search["trials"]),
                        "failed": sum(t.get("error") is not None for t in search["trials"]),
                        "epochs": sum(t["epochs"] for t in search["trials"]),
                        "wall_s": search["wall_s"], "status": "searched"})
        if runs:
            tests = [r["final"][f"test/{m}"] for r in runs if f"test/{m}" in r["final"]]
            mean, std = _mean_std(tests)
            row.update({f"test_{m}_mean": mean, f"test_{m}_std": std, "seeds": len(tests),
                        "epochs": row["epochs"] + sum(r["final"].get("epochs_run", 0) for r in runs),
                        "wall_s": row["wall_s"] + final_wall, "status": "done"})
        rows.append(row)
    schema = {"variant": pl.Utf8, "stage": pl.Int64, f"val_{m}": pl.Float64, f"test_{m}_mean": pl.Float64,
              f"test_{m}_std": pl.Float64, "seeds": pl.Int64, **{c: dtype for c, (_, dtype) in searched.items()},
              "trials": pl.Int64, "failed": pl.Int64, "epochs": pl.Int64, "wall_s": pl.Float64, "status": pl.Utf8,
              "bayes_accuracy": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _bayes(table: pl.DataFrame, metric: str) -> float | None:
    """The ceiling the table can state: the Bayes-optimal accuracy, when the metric is accuracy."""
    if metric != "accuracy" or "bayes_accuracy" not in table.columns or table.is_empty():
        return None
    return table["bayes_accuracy"][0]


def render_markdown(table: pl.DataFrame) -> str:
    """The table as it reads in the paper: test metric as mean +- std (percent for accuracy-like metrics);
    with a Bayes-optimal accuracy (built-in dataset), each variant's gap to it and a line stating it."""
    metric = next(c for c in table.columns if c.startswith("val_"))[4:]
    pct = metric in ("accuracy", "balanced_accuracy", "auroc")
    scale = 100.0 if pct else 1.0
    unit = " %" if pct else ""
    bayes = _bayes(table, metric)
    searched = table.columns[table.columns.index("seeds") + 1:table.columns.index("trials")]
    heads = " | ".join(HEADERS.get(c, c) for c in searched)
    gap_head, gap_rule = (" to Bayes (pts) |", "---:|") if bayes is not None else ("", "")
    lines = [f"| variant | stage | val {metric}{unit} | test {metric}{unit} (mean ± std) |{gap_head} seeds | {heads} | "
             "trials | epochs | time s |",
             "|---|---:|---:|---:|" + gap_rule + "---:|" + "---:|" * len(searched) + "---:|---:|---:|"]
    for r in table.iter_rows(named=True):
        val = r[f"val_{metric}"]
        mean, std = r[f"test_{metric}_mean"], r[f"test_{metric}_std"]
        test = "-" if mean is None else f"{mean * scale:.2f} ± {std * scale:.2f}"
        if bayes is not None:
            test += " | " + ("-" if mean is None else f"{100 * (mean - bayes):+.2f}")
        cells = " | ".join(_fmt(r[c], ".3g") if isinstance(r[c], float) else _fmt(r[c], "") for c in searched)
        trials = f"{r['trials']} ({r['failed']} failed)" if r.get("failed") else f"{r['trials']}"
        lines.append(f"| {r['variant']} | {r['stage']} | {_fmt(None if val is None else val * scale, '.2f')} | "
                     f"{test} | {r['seeds']} | {cells} | {trials} | {r['epochs']} | {r['wall_s']:.0f} |")
    if bayes is not None:
        lines.append(f"\nBayes-optimal test accuracy of this dataset (from its manifest): {100 * bayes:.2f} %; "
                     "'to Bayes' = test mean minus it.")
    return "\n".join(lines)


def save_table(table: pl.DataFrame, exp_dir: str | Path | Storage) -> list[str]:
    """Markdown, CSV and Parquet, each written whole (a reader never sees half a table); their locations."""
    storage = open_storage(exp_dir)
    buf = io.BytesIO()
    table.write_parquet(buf)
    return [storage.write_text(f"{TABLE}.md", render_markdown(table) + "\n"),
            storage.write_text(f"{TABLE}.csv", table.write_csv()),
            storage.write_bytes(f"{TABLE}.parquet", buf.getvalue())]
