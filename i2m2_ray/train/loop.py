"""The one training loop every variant uses, in-process or inside a Ray Train worker / Tune trial.

Variants differ only in the model the builder returns and how it is initialised. Like a
torchtune recipe, ``setup`` builds everything once (model, optimizer, data, loggers, the
resume state) into a ``Run``; ``train`` is then a short epoch loop, one comment per stage;
``finish`` evaluates the best epoch's weights on the test split and writes ``final.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from i2m2_ray.data.dataset import resolve_dataset
from i2m2_ray.data.format import Manifest, load_manifest
from i2m2_ray.errors import CheckpointError, ConfigError, TrainingDiverged
from i2m2_ray.fsutil import atomic_torch_save, atomic_write_json
from i2m2_ray.models import build_model, init_from_stage1
from i2m2_ray.models.builder import check_buildable, model_modalities, stage1_variants
from i2m2_ray.train.epoch import class_weights, evaluate, train_epoch
from i2m2_ray.train.metric_logging import ConsoleLogger, MetricLogger, TensorBoardLogger
from i2m2_ray.train.session import LocalSession, Session

if TYPE_CHECKING:  # pyarrow and yaml stay lazy so the models and train_epoch run with torch + numpy only
    from i2m2_ray.train.config import OptimConfig, TrainConfig

MODEL_FILE = "model.pt"
INIT_FILE = "init.pt"
RESULT_FILE = "final.json"  # not result.json: Tune writes its own into a trial directory
ARTIFACTS = (MODEL_FILE, RESULT_FILE, INIT_FILE, "config.yaml", "tensorboard")  # what trials publish to storage
EARLY_ARTIFACTS = (INIT_FILE, "config.yaml")  # at the first report: a trial the scheduler stops never ends
REPORT_ARTIFACTS = ("tensorboard",)  # at every report: a stopped trial's curves (its reused process never exits)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_BUILDABLE: set[tuple] = set()  # (dataset, manifest mtime, variant, model config) already checked here
RESUME_KEYS = ("variant", "seed", "dataset", "model", "optim", "init", "class_weighted", "metric", "mode",
               "modality_dropout")  # config sections that must match for a run directory to be resumed
RESUME_DEFAULTS = {"modality_dropout": 0.0}  # keys added later: what an older checkpoint implies


def pick_device(gpu: str) -> torch.device:
    want = str(gpu).lower()
    if want == "true" and not torch.cuda.is_available():
        raise ConfigError("gpu=true but no CUDA device is visible")
    if want in ("true", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def return_freed_memory() -> None:
    """glibc serves blocks >= 1 MiB (activations, batches) from their own mappings, returned to the OS
    when freed; by default they come from the heap, which keeps each step's high-water mark (I2M2 LF,
    11k/1k/2k AV-MNIST rebuild: 0.16 GB of the training process's RSS was freed heap)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 2**20)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)


def _better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    for key in RESUME_KEYS:
        if saved.get(key, RESUME_DEFAULTS.get(key)) != current.get(key):
            raise CheckpointError(f"{run_dir}: checkpoint was made with a different '{key}' "
                                  f"({saved.get(key)!r} vs now {current.get(key)!r}); use a new run_dir")


def per_worker_batch(global_batch: int, world_size: int) -> int:
    """``optim.batch_size`` is the GLOBAL batch: each of ``world_size`` workers takes an equal share,
    so N workers step on the same samples, with the same averaged gradient, as one worker does."""
    if global_batch % world_size:
        raise ConfigError(f"optim.batch_size: {global_batch} is the global batch and must be divisible by "
                          f"workers={world_size}")
    return global_batch // world_size


def prepare_run(cfg: TrainConfig) -> tuple[Path, Manifest, list[str]]:
    """Resolve and check the dataset and variant before any training starts."""
    root = resolve_dataset(cfg.dataset)
    manifest = load_manifest(root)
    mods = model_modalities(manifest, cfg.model)
    key = (str(root), (root / "manifest.json").stat().st_mtime_ns, cfg.variant, repr(cfg.model))
    if key not in _BUILDABLE:  # a reused trial actor checks each setting once (0.1-0.3 s a build)
        check_buildable(manifest, cfg.variant, cfg.model)
    _BUILDABLE.add(key)
    expected = set(stage1_variants(cfg.variant, mods)) if cfg.init else set()
    unknown = sorted(set(cfg.init) - expected)
    if unknown:
        raise ConfigError(f"init.{unknown[0]}: {cfg.variant} is initialised from "
                          f"{', '.join(sorted(expected)) or 'nothing'}")
    return root, manifest, mods


@dataclass
class Run:
    """Everything the epoch loop needs, built once by ``setup``; the last five fields are the resume state."""

    cfg: TrainConfig
    session: Session
    model: nn.Module  # wrapped (DDP / FSDP) by the session when distributed
    optimizer: torch.optim.Optimizer
    data: Any  # InMemoryData or a Ray Data shard reader: train_batches / eval_batches / has
    manifest: Manifest
    device: torch.device
    loggers: list[MetricLogger]
    run_dir: Path
    weights: torch.Tensor | None  # class weights of the loss, or None
    resolved: dict[str, Any]  # the config as saved in config.yaml and in every checkpoint
    batch_size: int  # this worker's share of the global batch
    start_epoch: int = 0
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0
    stopped: bool = False


def setup(cfg: TrainConfig, session: Session | None = None, loggers: list[MetricLogger] | None = None,
          data: Any = None, console: bool = True) -> Run:
    """Seed, build the model (stage-1 init), data, optimizer and loggers; restore a checkpoint if any.

    The order is part of the contract: the seeded RNG draws (model init) happen in the same order on
    a fresh and a resumed run, so resumed runs end with the same numbers as uninterrupted ones.
    """
    from i2m2_ray.config import save_yaml, to_dict
    from i2m2_ray.data.memory import InMemoryData

    run_dir = Path(cfg.run_dir).expanduser()
    session = session or LocalSession(run_dir, cfg.metric, cfg.mode, cfg.keep_checkpoints, cfg.resume)
    rank = session.rank
    batch_size = per_worker_batch(cfg.optim.batch_size, session.world_size)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return_freed_memory()
    root, manifest, mods = prepare_run(cfg)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    device = pick_device(cfg.gpu)
    model = build_model(manifest, cfg.variant, cfg.model)
    if cfg.init:
        from i2m2_ray.storage import local_copies

        with local_copies(dict(cfg.init)) as files:  # object-storage inits fetched to scratch first
            init_from_stage1(model, files)
        if rank == 0:  # the exact starting weights, so stage-2 provenance can be checked, not assumed
            atomic_torch_save(model.state_dict(), run_dir / INIT_FILE)
    model.to(device)
    resolved = to_dict(cfg)
    state = session.load_state()
    if state is not None:
        _check_resumable(state["config"], resolved, run_dir)
    data = data or InMemoryData(root, manifest, mods)
    weights = class_weights(data.train_labels(), manifest).to(device) if cfg.class_weighted else None
    wrapped = session.prepare_model(model, device)
    optimizer = build_optimizer(wrapped, cfg.optim)
    run = Run(cfg, session, wrapped, optimizer, data, manifest, device, list(loggers or []), run_dir, weights,
              resolved, batch_size)
    if state is not None:
        session.load_model_state(wrapped, state["model"])
        session.load_optimizer_state(wrapped, optimizer, state["optimizer"])
        torch.set_rng_state(state["rng"])
        run.start_epoch, run.best, run.best_epoch, run.stale = (state["epoch"], state["best"],
                                                                state["best_epoch"], state["stale"])
        run.stopped = state.get("stopped", False)
    if rank == 0:
        save_yaml(resolved, run_dir / "config.yaml")
        if console:
            run.loggers.append(ConsoleLogger(cfg.metric, cfg.epochs, prefix=f"[{cfg.variant}] "))
        if cfg.tensorboard:
            run.loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    return run


def train(cfg: TrainConfig, session: Session | None = None, loggers: list[MetricLogger] | None = None,
          data: Any = None, console: bool = True) -> dict[str, Any]:
    """Train ``cfg.variant`` and return the final metrics (best validation epoch, test split)."""
    run = setup(cfg, session, loggers, data, console)
    session, metric_key = run.session, f"val/{cfg.metric}"
    started = time.perf_counter()
    epoch = run.start_epoch
    try:
        for epoch in range(run.start_epoch + 1, cfg.epochs + 1):
            if run.stopped:
                break
            t0 = time.perf_counter()
            # train: this rank's share of the epoch, in an order fixed by (seed, epoch)
            # (the batch iterator is not kept in a local: it holds the train split, which finish() frees)
            train_loss, seen = train_epoch(
                run.model, run.optimizer,
                run.data.train_batches(run.batch_size, cfg.seed, epoch, session.rank, session.world_size),
                run.weights, cfg.optim.grad_clip, run.device, cfg.modality_dropout,
                dropout_generator(cfg.seed, epoch, session.rank))
            # sync: ranks agree on buffers and the mean loss, so all stop (or diverge) together
            train_loss = session.sync_epoch(run.model, train_loss)
            check_finite(cfg, epoch, train_loss)
            train_s = time.perf_counter() - t0
            # validate: the combined model and each expert on the validation split
            val, val_lp, val_y = evaluate(run.model, run.data.eval_batches("val", cfg.eval_batch_size),
                                          run.device, run.manifest, "val")
            # track best / early stop
            improved = track_best(run, epoch, val[metric_key])
            # log
            metrics = {"epoch": epoch, "train/loss": train_loss, **val,
                       f"{metric_key}_best": run.best if run.best is not None else float("nan"),
                       "best_epoch": run.best_epoch, "lr": run.optimizer.param_groups[0]["lr"],
                       "time/epoch_s": time.perf_counter() - t0,
                       "train/samples_per_s": seen * session.world_size / max(train_s, 1e-9)}
            for lg in run.loggers:
                lg.log(epoch, metrics)
                lg.log_predictions(epoch, val_lp, val_y, run.manifest.classes)
            # checkpoint + report
            save_checkpoint(run, epoch, metrics, improved)
            if run.stopped:
                if session.rank == 0 and console:
                    print(f"[{cfg.variant}] early stop: no {cfg.metric} improvement for {cfg.patience} epochs",
                          flush=True)
                break
        return finish(run, epoch, time.perf_counter() - started)
    finally:
        for lg in run.loggers:
            lg.close()


def dropout_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Modality-dropout draws fixed by (seed, epoch, rank): a resumed epoch redraws the same rows, and
    the global RNG (model init, SpecAugment) is untouched, so p = 0 trains exactly as without it."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def check_finite(cfg: TrainConfig, epoch: int, train_loss: float) -> None:
    """A NaN / inf epoch loss ends the run (checked once per epoch: no per-batch device sync)."""
    if not math.isfinite(train_loss):
        fix = "lower optim.lr or optim.grad_clip" if cfg.optim.grad_clip is not None else \
            "lower optim.lr or set optim.grad_clip"
        raise TrainingDiverged(f"{cfg.variant} epoch {epoch}: training loss is {train_loss}; {fix}")


def track_best(run: Run, epoch: int, value: float) -> bool:
    """Update the best value, its epoch and the patience count; True when this epoch is the new best."""
    improved = _better(value, run.best, run.cfg.mode)
    if improved:
        run.best, run.best_epoch, run.stale = value, epoch, 0
    else:
        run.stale += 1
    run.stopped = run.cfg.patience is not None and run.stale >= run.cfg.patience
    return improved


def save_checkpoint(run: Run, epoch: int, metrics: dict[str, float], improved: bool) -> None:
    """Every rank gathers the state (collectives for sharded models); rank 0 writes ``model.pt`` when
    the epoch is the best so far and hands the full checkpoint to the session."""
    model_state = run.session.model_state(run.model)
    optim_state = run.session.optimizer_state(run.model, run.optimizer)
    ckpt = None
    if run.session.rank == 0:
        if improved:
            atomic_torch_save(model_state, run.run_dir / MODEL_FILE)
        ckpt = {"model": model_state, "optimizer": optim_state, "epoch": epoch, "best": run.best,
                "best_epoch": run.best_epoch, "stale": run.stale, "stopped": run.stopped,
                "rng": torch.get_rng_state(), "config": run.resolved}
    run.session.report(metrics, ckpt)


def finish(run: Run, last_epoch: int, seconds: float) -> dict[str, Any]:
    """Evaluate the best epoch's weights on val and test; write ``final.json`` on rank 0."""
    cfg = run.cfg
    run.session.load_best(run.model, run.run_dir / MODEL_FILE)
    result: dict[str, Any] = {"variant": cfg.variant, "best_epoch": run.best_epoch, "epochs_run": last_epoch,
                              f"val/{cfg.metric}_best": run.best, "train_seconds": seconds}
    drop = getattr(run.data, "drop", None)
    if drop is not None:  # training is over: free its split before the test split is read
        drop("train")
    for split in ("val", "test"):
        if run.data.has(split):
            metrics, _, _ = evaluate(run.model, run.data.eval_batches(split, cfg.eval_batch_size), run.device,
                                     run.manifest, split)
            result.update(metrics)
            if split == "test":
                for lg in run.loggers:
                    lg.log(run.best_epoch, {k: v for k, v in metrics.items() if "/expert/" not in k})
    if run.session.rank == 0:
        atomic_write_json(run.run_dir / RESULT_FILE, result)
    return result
