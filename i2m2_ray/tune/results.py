"""The comparison table: one row per variant, read from the experiment's ``state.json``.

Works on unfinished experiments too: variants whose phases have not finished show
what is known (search result without test numbers, or nothing).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from i2m2_ray.config import from_dict, load_yaml
from i2m2_ray.tune.experiment import ExperimentConfig
from i2m2_ray.tune.state import ExperimentState, slug

TABLE = "results"


def load_experiment_dir(exp_dir: str | Path) -> tuple[ExperimentConfig, ExperimentState]:
    from i2m2_ray.errors import ConfigError
    from i2m2_ray.tune.runner import EXPERIMENT_FILE

    exp_dir = Path(exp_dir)
    if not (exp_dir / EXPERIMENT_FILE).is_file():
        raise ConfigError(f"{exp_dir}: not an experiment directory (no {EXPERIMENT_FILE})")
    return from_dict(ExperimentConfig, load_yaml(exp_dir / EXPERIMENT_FILE)), ExperimentState(exp_dir)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def results_table(exp_dir: str | Path) -> pl.DataFrame:
    """Best validation metric, test mean and sample std over seeds, best lr / wd, trials, epochs, time."""
    exp, state = load_experiment_dir(exp_dir)
    m = exp.metric
    rows = []
    for variant in exp.variants:
        search = state.phase(f"search-{slug(variant)}")
        final_phase = state.phase("final")
        final = None if final_phase is None else {
            "runs": [r for r in final_phase["runs"] if r["variant"] == variant], "wall_s": final_phase["wall_s"]}
        stage = 1 if variant.split(":")[0] in ("unimodal", "inter") else 2
        row: dict[str, Any] = {"variant": variant, "stage": stage, f"val_{m}": None,
                               f"test_{m}_mean": None, f"test_{m}_std": None, "seeds": 0, "lr": None,
                               "weight_decay": None, "trials": 0, "epochs": 0, "wall_s": 0.0,
                               "status": "pending"}
        if search:
            best = search["best"]
            row.update({f"val_{m}": best["val_best"], "lr": best["lr"], "weight_decay": best["weight_decay"],
                        "trials": len(search["trials"]), "epochs": sum(t["epochs"] for t in search["trials"]),
                        "wall_s": search["wall_s"], "status": "searched"})
        if final:
            tests = [r["final"][f"test/{m}"] for r in final["runs"] if f"test/{m}" in r["final"]]
            mean, std = _mean_std(tests)
            row.update({f"test_{m}_mean": mean, f"test_{m}_std": std, "seeds": len(tests),
                        "epochs": row["epochs"] + sum(r["final"].get("epochs_run", 0) for r in final["runs"]),
                        "wall_s": row["wall_s"] + final["wall_s"] * len(final["runs"]) / max(len(final_phase["runs"]), 1),
                        "status": "done"})
        rows.append(row)
    schema = {"variant": pl.Utf8, "stage": pl.Int64, f"val_{m}": pl.Float64, f"test_{m}_mean": pl.Float64,
              f"test_{m}_std": pl.Float64, "seeds": pl.Int64, "lr": pl.Float64, "weight_decay": pl.Float64,
              "trials": pl.Int64, "epochs": pl.Int64, "wall_s": pl.Float64, "status": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def render_markdown(table: pl.DataFrame) -> str:
    """The table as it reads in the paper: test metric as mean +- std (percent for accuracy-like metrics)."""
    metric = next(c for c in table.columns if c.startswith("val_"))[4:]
    pct = metric in ("accuracy", "balanced_accuracy", "auroc")
    scale = 100.0 if pct else 1.0
    unit = " %" if pct else ""
    lines = [f"| variant | stage | val {metric}{unit} | test {metric}{unit} (mean ± std) | seeds | lr | wd | "
             "trials | epochs | time s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.iter_rows(named=True):
        val = r[f"val_{metric}"]
        mean, std = r[f"test_{metric}_mean"], r[f"test_{metric}_std"]
        test = "-" if mean is None else f"{mean * scale:.2f} ± {std * scale:.2f}"
        lines.append(f"| {r['variant']} | {r['stage']} | {_fmt(None if val is None else val * scale, '.2f')} | "
                     f"{test} | {r['seeds']} | {_fmt(r['lr'], '.3g')} | {_fmt(r['weight_decay'], '.3g')} | "
                     f"{r['trials']} | {r['epochs']} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def save_table(table: pl.DataFrame, exp_dir: str | Path) -> list[Path]:
    exp_dir = Path(exp_dir)
    paths = [exp_dir / f"{TABLE}.md", exp_dir / f"{TABLE}.csv", exp_dir / f"{TABLE}.parquet"]
    paths[0].write_text(render_markdown(table) + "\n")
    table.write_csv(paths[1])
    table.write_parquet(paths[2])
    return paths
