"""Post-hoc analyses of finished final runs, on the test split.

- Dependency diagnosis (I2M2 paper, Sec. "which dependency"): label entropy H(y) against each model's
  mean predictive entropy, beside its ECE, accuracy and log-likelihood (entropy means little without
  calibration), and the verdict: does the joint (inter) model beat intra on the same test rows?
  (paired bootstrap, ``diagnosis.py``).
- Missing modality: each intra / I2M2 model with one modality absent at test time, i.e. the product of
  the experts that do not read it, beside the unimodal model of the remaining modality.
- Expert ablation: each I2M2 model with one expert left out of the product (the inter expert still
  reads every modality, so this is not a missing modality).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from i2m2_ray.config import from_dict
from i2m2_ray.data.format import load_manifest
from i2m2_ray.data.memory import InMemoryData
from i2m2_ray.storage import open_storage
from i2m2_ray.train.config import TrainConfig
from i2m2_ray.train.epoch import evaluate, predict
from i2m2_ray.train.loop import MODEL_FILE, prepare_run
from i2m2_ray.train.metrics import classification_metrics, predictive_entropy
from i2m2_ray.tune.diagnosis import DETECTED, NOT_DETECTED, dependency_gap, product_log_probs
from i2m2_ray.tune.state import ExperimentState

CPU = torch.device("cpu")


def _load_run(trial_dir: str | Path) -> tuple[TrainConfig, torch.nn.Module, InMemoryData]:
    from i2m2_ray.models import build_model

    trial_dir = open_storage(trial_dir)  # a local path or an object-storage URI
    cfg = from_dict(TrainConfig, trial_dir.read_yaml("config.yaml"))
    root, manifest, mods = prepare_run(cfg)
    model = build_model(manifest, cfg.variant, cfg.model)
    model.load_state_dict(torch.load(io.BytesIO(trial_dir.read_bytes(MODEL_FILE)), map_location="cpu",
                                     weights_only=True))
    return cfg, model.eval(), _data(root, mods)


_DATA_CACHE: dict[tuple[str, tuple[str, ...]], InMemoryData] = {}


def _data(root: Path, mods: list[str]) -> InMemoryData:
    key = (str(root), tuple(mods))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = InMemoryData(root, load_manifest(root), mods)
    return _DATA_CACHE[key]


def label_entropy(labels: np.ndarray) -> float:
    """Empirical H(y) in nats; per label, averaged, for multi-label."""
    if labels.ndim == 1:
        p = np.bincount(labels) / len(labels)
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())
    q = labels.mean(axis=0).clip(1e-12, 1 - 1e-12)
    return float(np.mean(-(q * np.log(q) + (1 - q) * np.log(1 - q))))


def _final_runs(exp_dir: str | Path) -> list[dict[str, Any]]:
    """Finished final runs of both final phases (stage 1 and stage 2), ``trial_dir`` as a location."""
    storage = open_storage(exp_dir)
    return [{**r, "trial_dir": storage.location(r["trial_dir"])} for r in ExperimentState(storage).final_runs()
            if r["error"] is None and r["final"]]


def _split(data: InMemoryData) -> str:
    return "test" if data.has("test") else "val"


def _predictions(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One final run's combined log-probs and labels on the test split."""
    cfg, model, data = _load_run(run["trial_dir"])
    log_probs, _, labels = predict(model, data.eval_batches(_split(data), cfg.eval_batch_size), CPU)
    return log_probs, labels


def dependency_table(exp_dir: str | Path) -> pl.DataFrame | None:
    """Per model (every variant, intra included): mean predictive entropy against H(y), with ECE, accuracy
    and mean log-likelihood on the same rows, averaged over the seeds' final runs."""
    rows = []
    for run in _final_runs(exp_dir):
        log_probs, labels = _predictions(run)
        m = classification_metrics(log_probs, labels)
        rows.append({"model": run["variant"], "seed": run["seed"], "predictive_entropy": predictive_entropy(log_probs),
                     "label_entropy": label_entropy(labels), "ece": m["ece"], "accuracy": m["accuracy"],
                     "log_likelihood": -m["loss"]})
    if not rows:
        return None
    return (pl.DataFrame(rows).group_by("model", maintain_order=True)
            .agg(pl.col("predictive_entropy").mean(), pl.col("label_entropy").first(), pl.col("ece").mean(),
                 pl.col("accuracy").mean(), pl.col("log_likelihood").mean(), pl.len().alias("seeds"))
            .with_columns((pl.col("predictive_entropy") / pl.col("label_entropy")).alias("ratio"))
            .select("model", "seeds", "label_entropy", "predictive_entropy", "ratio", "ece", "accuracy",
                    "log_likelihood"))


def dependency_verdict(exp_dir: str | Path, resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> pl.DataFrame | None:
    """Each inter model minus intra (or, without intra, the product of the unimodal models of the same
    seed) in test accuracy and log-likelihood, with paired bootstrap intervals over test rows.

    Per row, each variant's score is averaged over its seeds' models (seeds both variants have). The
    intervals are Bonferroni-corrected over every interval read (2 per inter model), so the chance of
    a false "detected" stays below 1 - ``level``.
    """
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for run in _final_runs(exp_dir):
        runs.setdefault(run["variant"], {})[run["seed"]] = run
    joints = [v for v in runs if v.startswith("inter:")]
    unimodal = [v for v in runs if v.startswith("unimodal:")]
    baseline = "intra" if "intra" in runs else ("product of " + ", ".join(unimodal) if len(unimodal) > 1 else None)
    if not joints or baseline is None:
        return None
    base_seeds = set(runs["intra"]) if "intra" in runs else set.intersection(*(set(runs[u]) for u in unimodal))
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def preds(variant: str, s: int) -> tuple[np.ndarray, np.ndarray]:
        run = runs[variant][s]
        if run["trial_dir"] not in cache:
            cache[run["trial_dir"]] = _predictions(run)
        return cache[run["trial_dir"]]

    def base(s: int) -> np.ndarray:
        if "intra" in runs:
            return preds("intra", s)[0]
        return product_log_probs([preds(u, s)[0] for u in unimodal])

    per_interval = 1.0 - (1.0 - level) / (2 * len(joints))
    rows = []
    for joint in joints:
        seeds = sorted(base_seeds & set(runs[joint]))
        if not seeds:
            continue
        labels = preds(joint, seeds[0])[1]
        gap = dependency_gap([base(s) for s in seeds], [preds(joint, s)[0] for s in seeds], labels, resamples,
                             seed, per_interval)
        rows.append({"joint": joint, "baseline": baseline, "seeds": len(seeds), "rows": len(labels),
                     "accuracy_gap": gap.accuracy[0], "accuracy_low": gap.accuracy[1],
                     "accuracy_high": gap.accuracy[2], "loglik_gap": gap.log_likelihood[0],
                     "loglik_low": gap.log_likelihood[1], "loglik_high": gap.log_likelihood[2],
                     "level": per_interval, "verdict": gap.verdict})
    return pl.DataFrame(rows) if rows else None


def verdict_line(frame: pl.DataFrame | None, level: float = 0.95) -> str:
    """One sentence for the report: the verdict and the evidence it rests on."""
    if frame is None:
        return "inter-modality dependency: not assessed (needs final runs of an inter model and of intra)"
    found = frame.filter(pl.col("verdict") == DETECTED)["joint"].to_list()
    base = frame["baseline"][0]
    if found:
        return (f"inter-modality dependency: {DETECTED} ({', '.join(found)} beats {base} on the same test rows; "
                f"{level:.0%} paired bootstrap, Bonferroni-corrected)")
    return (f"inter-modality dependency: {NOT_DETECTED} (no inter model beats {base} beyond the "
            f"{level:.0%} paired bootstrap interval, Bonferroni-corrected)")


def missing_modality_table(exp_dirs: str | Path | Sequence[str | Path], metric: str) -> pl.DataFrame | None:
    """Each intra / I2M2 final run with one modality missing at test time (its inputs unread, every expert
    reading it dropped), beside the final runs of the unimodal model of the remaining modality (same
    seeds). Several experiment directories (e.g. one trained with ``modality_dropout``) share one table;
    ``modality_dropout`` is a column, read from each run's config."""
    rows = []
    for exp_dir in [exp_dirs] if isinstance(exp_dirs, (str, Path)) else exp_dirs:
        runs = _final_runs(exp_dir)
        finals = {(r["variant"], r["seed"]): r["final"] for r in runs}
        for run in runs:
            if run["variant"].split(":")[0] not in ("intra", "i2m2"):
                continue
            cfg, model, data = _load_run(run["trial_dir"])
            split = _split(data)
            for absent in [None, *model.droppable()]:
                missing = frozenset() if absent is None else frozenset({absent})
                metrics, _, _ = evaluate(model, data.eval_batches(split, cfg.eval_batch_size), CPU, data.manifest,
                                         split, missing=missing)
                left = [m for m in model.modalities if m not in missing]
                alone = f"unimodal:{left[0]}" if absent is not None and len(left) == 1 else None
                rows.append({"model": run["variant"], "modality_dropout": cfg.modality_dropout,
                             "missing": absent or "(none)",
                             "experts": " + ".join(e for e in model.experts if e not in model.experts_reading(missing)),
                             "seed": run["seed"], metric: metrics[f"{split}/{metric}"], "unimodal": alone,
                             "unimodal_value": finals.get((alone, run["seed"]), {}).get(f"{split}/{metric}")})
    if not rows:
        return None
    frame = pl.DataFrame(rows, schema_overrides={"unimodal": pl.Utf8, "unimodal_value": pl.Float64})
    return (frame.group_by("model", "modality_dropout", "missing", maintain_order=True)
            .agg(pl.col("experts").first(), pl.col(metric).mean().alias(f"{metric}_mean"),
                 pl.col(metric).std().alias(f"{metric}_std"), pl.len().alias("seeds"), pl.col("unimodal").first(),
                 pl.col("unimodal_value").mean().alias(f"unimodal_{metric}_mean"),
                 pl.col("unimodal_value").count().alias("unimodal_seeds")))


def expert_ablation_table(exp_dir: str | Path, metric: str) -> pl.DataFrame | None:
    """Each I2M2 final run with one expert left out of the product at test time (not a missing modality:
    without the image expert, the inter expert still reads the image)."""
    rows = []
    for run in _final_runs(exp_dir):
        if not run["variant"].startswith("i2m2"):
            continue
        cfg, model, data = _load_run(run["trial_dir"])
        split = _split(data)
        for left_out in [None, *model.experts]:
            leave = frozenset() if left_out is None else frozenset({left_out})
            metrics, _, _ = evaluate(model, data.eval_batches(split, cfg.eval_batch_size), CPU,
                                     data.manifest, split, leave_out=leave)
            rows.append({"model": run["variant"], "left_out": left_out or "(none)", "seed": run["seed"],
                         metric: metrics[f"{split}/{metric}"]})
    if not rows:
        return None
    return (pl.DataFrame(rows).group_by("model", "left_out", maintain_order=True)
            .agg(pl.col(metric).mean().alias(f"{metric}_mean"), pl.col(metric).std().alias(f"{metric}_std"),
                 pl.len().alias("seeds")))
