"""Post-hoc analyses of finished final runs, on the test split.

- Dependency diagnosis (I2M2 paper, Sec. "which dependency"): label entropy H(y) against the mean
  predictive entropy of each unimodal model and of each inter model. A unimodal model staying
  near H(y) carries little intra-modality signal; a drop only for the joint model points to
  inter-modality dependency.
- Missing modality: each I2M2 model's test metric with one expert left out of the product.
"""

from __future__ import annotations

import io
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
from i2m2_ray.train.metrics import predictive_entropy
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


def dependency_table(exp_dir: str | Path) -> pl.DataFrame | None:
    rows = []
    for run in _final_runs(exp_dir):
        if run["variant"].split(":")[0] not in ("unimodal", "inter"):
            continue
        cfg, model, data = _load_run(run["trial_dir"])
        split = "test" if data.has("test") else "val"
        log_probs, _, labels = predict(model, data.eval_batches(split, cfg.eval_batch_size), CPU)
        rows.append({"model": run["variant"], "seed": run["seed"], "predictive_entropy": predictive_entropy(log_probs),
                     "label_entropy": label_entropy(labels)})
    if not rows:
        return None
    return (pl.DataFrame(rows).group_by("model", maintain_order=True)
            .agg(pl.col("predictive_entropy").mean(), pl.col("label_entropy").first(), pl.len().alias("seeds"))
            .with_columns((pl.col("predictive_entropy") / pl.col("label_entropy")).alias("ratio")))


def missing_modality_table(exp_dir: str | Path, metric: str) -> pl.DataFrame | None:
    rows = []
    for run in _final_runs(exp_dir):
        if not run["variant"].startswith("i2m2"):
            continue
        cfg, model, data = _load_run(run["trial_dir"])
        split = "test" if data.has("test") else "val"
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
