"""The one training loop every variant uses, in-process or inside a Ray Train worker / Tune trial.

Variants differ only in the model the builder returns and how it is initialised.
Per epoch: train, validate (combined model and each expert), checkpoint, report,
early-stop on the validation metric. At the end the best epoch's weights are
evaluated on the test split and saved as a plain state dict (``model.pt``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from i2m2_ray.data.format import Manifest, load_manifest
from i2m2_ray.errors import CheckpointError, ConfigError, DataError
from i2m2_ray.models import build_model, init_from_stage1, parse_variant
from i2m2_ray.models.builder import model_modalities
from i2m2_ray.train.logging import ConsoleLogger, MetricLogger, TensorBoardLogger
from i2m2_ray.train.metrics import classification_metrics
from i2m2_ray.train.session import LocalSession, Session, unwrap

if TYPE_CHECKING:  # pyarrow and yaml stay lazy so the models and train_epoch run with torch + numpy only
    from i2m2_ray.train.config import DatasetConfig, OptimConfig, TrainConfig

MODEL_FILE = "model.pt"
INIT_FILE = "init.pt"
RESULT_FILE = "final.json"  # not result.json: Tune writes its own into a trial directory
# Config sections that must match for a run directory to be resumed.
RESUME_KEYS = ("variant", "seed", "dataset", "model", "optim", "init", "class_weighted", "metric", "mode")


def cache_root(cfg: DatasetConfig) -> Path:
    import os

    return Path(cfg.cache_dir or os.environ.get("I2M2_CACHE") or Path.home() / ".cache" / "i2m2_ray")


def resolve_dataset(cfg: DatasetConfig) -> Path:
    """A prepared dataset directory; the built-in one is generated once per knob setting and cached."""
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        if not path.is_dir():
            raise DataError(f"dataset.path: {path} is not a directory")
        return path
    from i2m2_ray.data.synthetic import GENERATOR_VERSION, generate

    knobs = {**asdict(cfg.builtin), "generator_version": GENERATOR_VERSION}
    key = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root(cfg) / f"builtin-{key}"
    if not (path / "manifest.json").is_file():
        try:
            generate(cfg.builtin, path)
        except (DataError, OSError):
            if not (path / "manifest.json").is_file():  # lost a race to a concurrent writer: fine
                raise
    return path


def pick_device(gpu: str) -> torch.device:
    want = str(gpu).lower()
    if want == "true" and not torch.cuda.is_available():
        raise ConfigError("gpu=true but no CUDA device is visible")
    if want in ("true", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)


def class_weights(labels: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """Inverse-frequency weights: (C,) for multiclass, (L, 2) for multi-label heads."""
    if manifest.task == "multiclass":
        counts = torch.bincount(labels, minlength=manifest.num_classes).float().clamp(min=1)
        return counts.sum() / (len(counts) * counts)
    pos = labels.float().sum(dim=0).clamp(min=1)
    neg = (len(labels) - labels.float().sum(dim=0)).clamp(min=1)
    return torch.stack([len(labels) / (2 * neg), len(labels) / (2 * pos)], dim=1)


def nll(log_probs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """One cross-entropy on the combined output; per head (then averaged) for multi-label."""
    if log_probs.dim() == 2:
        return F.nll_loss(log_probs, labels, weight=weights)
    heads = log_probs.shape[1]
    losses = [F.nll_loss(log_probs[:, h], labels[:, h], weight=None if weights is None else weights[h])
              for h in range(heads)]
    return torch.stack(losses).mean()


class InMemoryData:
    """The splits as tensors in RAM; batches are tensor slices (no DataLoader overhead)."""

    def __init__(self, root: Path, manifest: Manifest, modalities: list[str],
                 splits: tuple[str, ...] = ("train", "val", "test")) -> None:
        from i2m2_ray.data.memory import load_split

        self.manifest = manifest
        self.splits = {s: load_split(root, s, manifest, modalities) for s in splits if s in manifest.splits}
        for split in ("train", "val"):
            if split in splits and split not in self.splits:
                raise DataError(f"{root}: dataset has no {split!r} split")

    def train_labels(self) -> torch.Tensor:
        return self.splits["train"].labels

    def train_batches(self, batch_size: int, seed: int, epoch: int, rank: int, world_size: int):
        from i2m2_ray.data.memory import iterate_batches

        return iterate_batches(self.splits["train"], batch_size, shuffle=True, seed=seed, epoch=epoch,
                               rank=rank, world_size=world_size)

    def eval_batches(self, split: str, batch_size: int):
        from i2m2_ray.data.memory import iterate_batches

        return iterate_batches(self.splits[split], batch_size, shuffle=False)

    def has(self, split: str) -> bool:
        return split in self.splits


def to_device(inputs: dict[str, torch.Tensor], labels: torch.Tensor, device: torch.device):
    if device.type == "cpu":
        return inputs, labels
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}, labels.to(device, non_blocking=True)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches, weights: torch.Tensor | None,
                grad_clip: float | None, device: torch.device) -> tuple[float, int]:
    """One pass over the training batches; returns (mean loss, samples)."""
    model.train()
    total = torch.zeros((), device=device)
    seen = 0
    use_bf16 = device.type == "cuda"
    for inputs, labels in batches:
        inputs, labels = to_device(inputs, labels, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(inputs)
        loss = nll(out.log_probs.float(), labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += loss.detach() * len(labels)
        seen += len(labels)
    return float(total) / max(seen, 1), seen


@torch.no_grad()
def predict(model: nn.Module, batches, device: torch.device,
            leave_out: frozenset[str] = frozenset()) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Combined log-probs, each expert's own log-probs, and labels, as numpy arrays."""
    model.eval()
    combined, experts, labels_all = [], {}, []
    use_bf16 = device.type == "cuda"
    for inputs, labels in batches:
        inputs, labels = to_device(inputs, labels, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = unwrap(model)(inputs, leave_out=leave_out)
        combined.append(out.log_probs.float().cpu())
        for name, logits in out.expert_logits.items():
            experts.setdefault(name, []).append(F.log_softmax(logits.float(), dim=-1).cpu())
        labels_all.append(labels.cpu())
    return (torch.cat(combined).numpy(), {k: torch.cat(v).numpy() for k, v in experts.items()},
            torch.cat(labels_all).numpy())


def evaluate(model: nn.Module, batches, device: torch.device, manifest: Manifest, prefix: str,
             leave_out: frozenset[str] = frozenset()) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics of the combined model under ``prefix/``, and of each expert under ``expert/<name>/``."""
    log_probs, expert_lp, labels = predict(model, batches, device, leave_out)
    metrics = {f"{prefix}/{k}": v for k, v in classification_metrics(log_probs, labels, manifest.classes).items()}
    if len(expert_lp) > 1:
        expert_prefix = "expert" if prefix == "val" else f"{prefix}/expert"
        for name, lp in expert_lp.items():
            for k, v in classification_metrics(lp, labels, manifest.classes).items():
                metrics[f"{expert_prefix}/{name}/{k}"] = v
    return metrics, log_probs, labels


def _better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    for key in RESUME_KEYS:
        if saved.get(key) != current.get(key):
            raise CheckpointError(f"{run_dir}: checkpoint was made with a different '{key}' "
                                  f"({saved.get(key)!r} vs now {current.get(key)!r}); use a new run_dir")


def per_worker_batch(global_batch: int, world_size: int) -> int:
    """``optim.batch_size`` is the GLOBAL batch: each of ``world_size`` workers takes an equal share,
    so N workers step on the same samples, with the same averaged gradient, as one worker does."""
    if global_batch % world_size:
        raise ConfigError(f"optim.batch_size: {global_batch} is the global batch and must be divisible by "
                          f"workers={world_size}")
    return global_batch // world_size


def load_model_state(session: Session | None, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A plain full state dict into a possibly wrapped model; sharded (FSDP) sessions scatter it themselves."""
    load = getattr(session, "load_model_state", None)
    if load is not None:
        load(model, state)
    else:
        unwrap(model).load_state_dict(state)


def optimizer_state(session: Session | None, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state to checkpoint; called on every rank since sharded sessions gather it."""
    get = getattr(session, "optimizer_state", None)
    return get(model, optimizer) if get is not None else optimizer.state_dict()


def load_optimizer_state(session: Session | None, model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    load = getattr(session, "load_optimizer_state", None)
    if load is not None:
        load(model, optimizer, state)
    else:
        optimizer.load_state_dict(state)


def prepare_run(cfg: TrainConfig) -> tuple[Path, Manifest, list[str]]:
    """Resolve and check the dataset and variant before any training starts."""
    root = resolve_dataset(cfg.dataset)
    manifest = load_manifest(root)
    mods = model_modalities(manifest, cfg.model)
    parse_variant(cfg.variant, mods)
    return root, manifest, mods


def train(cfg: TrainConfig, session: Session | None = None, loggers: list[MetricLogger] | None = None,
          data: Any = None, console: bool = True) -> dict[str, Any]:
    """Train ``cfg.variant`` and return the final metrics (best validation epoch, test split)."""
    from i2m2_ray.config import save_yaml, to_dict

    run_dir = Path(cfg.run_dir)
    session = session or LocalSession(run_dir, cfg.metric, cfg.mode, cfg.keep_checkpoints, cfg.resume)
    rank, world = session.rank, session.world_size
    batch_size = per_worker_batch(cfg.optim.batch_size, world)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root, manifest, mods = prepare_run(cfg)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    device = pick_device(cfg.gpu)
    model = build_model(manifest, cfg.variant, cfg.model)
    if cfg.init:
        init_from_stage1(model, cfg.init)
        if rank == 0:  # the exact starting weights, so stage-2 provenance can be checked, not assumed
            run_dir.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), run_dir / INIT_FILE)
    model.to(device)
    resolved = to_dict(cfg)
    state = session.load_state()
    if state is not None:
        _check_resumable(state["config"], resolved, run_dir)
    data = data or InMemoryData(root, manifest, mods)
    weights = class_weights(data.train_labels(), manifest).to(device) if cfg.class_weighted else None
    wrapped = session.prepare_model(model, device)
    optimizer = build_optimizer(wrapped, cfg.optim)

    start_epoch, best, best_epoch, stale = 0, None, 0, 0
    if state is not None:
        load_model_state(session, wrapped, state["model"])
        load_optimizer_state(session, wrapped, optimizer, state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch, best, best_epoch, stale = state["epoch"], state["best"], state["best_epoch"], state["stale"]

    loggers = list(loggers or [])
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(resolved, run_dir / "config.yaml")
        if console:
            loggers.append(ConsoleLogger(cfg.metric, cfg.epochs, prefix=f"[{cfg.variant}] "))
        if cfg.tensorboard:
            loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    metric_key = f"val/{cfg.metric}"
    started = time.perf_counter()
    stopped_early = state is not None and state.get("stopped", False)
    epoch = start_epoch
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        batches = data.train_batches(batch_size, cfg.seed, epoch, rank, world)
        train_loss, seen = train_epoch(wrapped, optimizer, batches, weights, cfg.optim.grad_clip, device)
        sync = getattr(session, "sync_epoch", None)  # optional: distributed sessions align ranks here
        if sync is not None:
            train_loss = sync(wrapped, train_loss)
        train_s = time.perf_counter() - t0
        val, val_lp, val_y = evaluate(wrapped, data.eval_batches("val", cfg.eval_batch_size), device, manifest, "val")
        value = val[metric_key]
        improved = _better(value, best, cfg.mode)
        if improved:
            best, best_epoch, stale = value, epoch, 0
        else:
            stale += 1
        stopped_early = cfg.patience is not None and stale >= cfg.patience
        metrics = {"epoch": epoch, "train/loss": train_loss, **val,
                   f"{metric_key}_best": best if best is not None else float("nan"),
                   "best_epoch": best_epoch, "lr": optimizer.param_groups[0]["lr"],
                   "time/epoch_s": time.perf_counter() - t0,
                   "train/samples_per_s": seen * world / max(train_s, 1e-9)}
        for lg in loggers:
            lg.log(epoch, metrics)
            lg.log_predictions(epoch, val_lp, val_y, manifest.classes)
        # Every rank gathers (collectives for sharded models); rank 0 writes.
        model_state = session.model_state(wrapped)
        optim_state = optimizer_state(session, wrapped, optimizer)
        ckpt = None
        if rank == 0:
            if improved:
                torch.save(model_state, run_dir / MODEL_FILE)
            ckpt = {"model": model_state, "optimizer": optim_state,
                    "epoch": epoch, "best": best, "best_epoch": best_epoch, "stale": stale,
                    "stopped": stopped_early, "rng": torch.get_rng_state(), "config": resolved}
        session.report(metrics, ckpt)
        if stopped_early:
            if rank == 0 and console:
                print(f"[{cfg.variant}] early stop: no {cfg.metric} improvement for {cfg.patience} epochs", flush=True)
            break

    result = finish(cfg, wrapped, data, manifest, device, run_dir, rank, best, best_epoch,
                    epoch, time.perf_counter() - started, loggers, session)
    for lg in loggers:
        lg.close()
    return result


def finish(cfg: TrainConfig, model: nn.Module, data: Any, manifest: Manifest, device: torch.device,
           run_dir: Path, rank: int, best: float | None, best_epoch: int, last_epoch: int,
           seconds: float, loggers: list[MetricLogger], session: Session | None = None) -> dict[str, Any]:
    """Evaluate the best epoch's weights on val and test; write ``final.json`` on rank 0."""
    best_path = run_dir / MODEL_FILE
    if best_path.is_file():
        load_model_state(session, model, torch.load(best_path, map_location="cpu", weights_only=True))
    result: dict[str, Any] = {"variant": cfg.variant, "best_epoch": best_epoch, "epochs_run": last_epoch,
                              f"val/{cfg.metric}_best": best, "train_seconds": seconds}
    val, _, _ = evaluate(model, data.eval_batches("val", cfg.eval_batch_size), device, manifest, "val")
    result.update(val)
    if data.has("test"):
        test, _, _ = evaluate(model, data.eval_batches("test", cfg.eval_batch_size), device, manifest, "test")
        result.update(test)
        for lg in loggers:
            lg.log(best_epoch, {k: v for k, v in test.items() if "/expert/" not in k})
    if rank == 0:
        (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=float))
    return result
