"""Where the training loop reports to and resumes from.

The loop only talks to a ``Session``: ``LocalSession`` keeps checkpoints in the run
directory for in-process runs; ``RayTrainSession`` (``i2m2_ray.train.worker``) and the
Tune session send the same reports to Ray Train or Ray Tune. That is what lets ONE loop run
in a notebook, a Train worker or a Tune trial unchanged.

Every hook of the base class works as is for one process and an unsharded model; distributed
sessions override what they must (wrapping, rank alignment, gathering sharded state).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from i2m2_ray.errors import CheckpointError
from i2m2_ray.fsutil import atomic_torch_save, atomic_write_json

STATE_FILE = "state.pt"
# The best weights so far travel in every checkpoint a Tune trial or Train run reports: a run restored on
# another node evaluates the right epoch, and the driver keeps a scheduler-stopped trial's weights.
BEST_IN_CHECKPOINT = "best_model.pt"
METRICS_FILE = "metrics.json"
STATE_KEYS = ("model", "optimizer", "epoch", "best", "best_epoch", "stale", "rng", "config")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class Session:
    """One process, no wrapping, nothing reported or resumed: subclasses override what differs."""

    rank: int = 0
    world_size: int = 1

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Wrap for data parallelism (DDP / FSDP) or return as is."""
        return model

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full, plain state dict of the unwrapped model (gathered on every rank for FSDP)."""
        return unwrap(model).state_dict()

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """A plain full state dict into a possibly wrapped model (sharded sessions scatter it)."""
        unwrap(model).load_state_dict(state)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state to checkpoint; called on every rank since sharded sessions gather it."""
        return optimizer.state_dict()

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def sync_epoch(self, model: nn.Module, train_loss: float) -> float:
        """After each training epoch: align ranks (buffers, loss); returns the loss all ranks agree on."""
        return train_loss

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Per-epoch metrics; ``state`` is the checkpoint to keep (rank 0 only, else None)."""

    def load_state(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None for a fresh start."""
        return None

    def load_best(self, model: nn.Module, path: Path) -> None:
        """The best epoch's weights (``model.pt``, written by rank 0) into the model for the final evaluation."""
        if path.is_file():
            self.load_model_state(model, read_torch_file(path, "model weights"))


def short_reason(exc: BaseException) -> str:
    """The first line of an exception, bounded: torch's load errors run to many lines."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def load_failure(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` failed, in words a user can act on (torch's own first line rarely says)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no directory
            return "truncated or not a PyTorch file"
    except OSError as os_exc:
        return short_reason(os_exc)
    return short_reason(exc)


def torch_load(path: Path) -> Any:
    """``torch.load`` of tensors only (no pickled code), onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def read_torch_file(path: Path, what: str = "file") -> Any:
    """A tensor file such as ``model.pt``; an unreadable one fails in one line naming it."""
    try:
        return torch_load(path)
    except Exception as exc:  # torch raises several types for truncated, garbage or unsafe files
        raise CheckpointError(f"{path}: unreadable {what} ({load_failure(path, exc)})") from None


def save_state(state: dict[str, Any], directory: Path, metrics: dict[str, float] | None = None) -> Path:
    """Write a checkpoint (and its metrics) atomically: a crash mid-write never leaves a truncated file."""
    atomic_torch_save(state, directory / STATE_FILE)
    if metrics is not None:
        atomic_write_json(directory / METRICS_FILE, metrics)
    return directory / STATE_FILE


def add_best(folder: Path, best: Path) -> None:
    """The best weights so far into a checkpoint folder (a hard link where it can: ``model.pt`` is
    replaced by rename, never rewritten in place)."""
    if not best.is_file():
        return
    try:
        os.link(best, folder / BEST_IN_CHECKPOINT)
    except OSError:
        shutil.copyfile(best, folder / BEST_IN_CHECKPOINT)


def restore_best(folder: Path, best: Path) -> None:
    """A checkpoint's best weights to this node's scratch, which may never have seen them."""
    src = folder / BEST_IN_CHECKPOINT
    if src.is_file():
        best.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, best)


def read_state(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(state, "")`` for a readable training checkpoint, else ``(None, why not)``."""
    try:
        state = torch_load(path)
    except Exception as exc:  # torch raises several types for truncated, garbage or unsafe files
        return None, load_failure(path, exc)
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    return (None, f"not a training checkpoint: no {missing[0]!r}") if missing else (state, "")


def load_state_file(path: Path, shown: str | Path | None = None) -> dict[str, Any]:
    """A training checkpoint; unreadable -> CheckpointError naming ``shown`` (default: ``path``)."""
    state, reason = read_state(path)
    if state is None:
        raise CheckpointError(f"{shown or path}: unreadable checkpoint ({reason})")
    return state


def checkpoint_dirs(ckpt_dir: Path) -> list[Path]:
    """``epoch_NNN`` directories holding a state file, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("epoch_*") if (p / STATE_FILE).is_file())


def load_latest(ckpt_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint under ``ckpt_dir``, falling back past unreadable ones with one
    warning line; every checkpoint unreadable -> CheckpointError (resuming from scratch would silently
    discard a run)."""
    found = checkpoint_dirs(ckpt_dir)
    skipped: list[tuple[Path, str]] = []
    for folder in reversed(found):
        state, reason = read_state(folder / STATE_FILE)
        if state is None:
            skipped.append((folder / STATE_FILE, reason))
            continue
        if skipped:
            path, reason = skipped[0]
            more = f" ({len(skipped)} unreadable checkpoints skipped)" if len(skipped) > 1 else ""
            print(f"warning: {path} is unreadable ({reason}); resuming from {folder.name}{more}",
                  file=sys.stderr, flush=True)
        return state
    if skipped:
        path, reason = skipped[0]
        raise CheckpointError(f"{ckpt_dir}: no readable checkpoint left (newest, {path.parent.name}/{STATE_FILE}: "
                              f"{reason}); remove the checkpoints or use a new run_dir")
    return None


class LocalSession(Session):
    """In-process runs: ``run_dir/checkpoints/epoch_NNN/state.pt``, keeping the best k and the latest."""

    def __init__(self, run_dir: str | Path, metric: str, mode: str, keep: int = 2, resume: bool = True) -> None:
        self.ckpt_dir = Path(run_dir).expanduser() / "checkpoints"
        self.metric, self.mode, self.keep, self.resume = f"val/{metric}", mode, keep, resume

    def checkpoints(self) -> list[Path]:
        return checkpoint_dirs(self.ckpt_dir)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is None:
            return
        epoch_dir = self.ckpt_dir / f"epoch_{int(metrics['epoch']):03d}"
        save_state(state, epoch_dir, metrics)
        self._prune(latest=epoch_dir)

    def _prune(self, latest: Path) -> None:
        scored = []
        for path in self.checkpoints():
            try:
                value = json.loads((path / METRICS_FILE).read_text())[self.metric]
            except (OSError, KeyError, ValueError):
                continue
            scored.append((value if self.mode == "max" else -value, path.name, path))
        scored.sort(reverse=True)
        keep = {p for _, _, p in scored[: self.keep]} | {latest}
        for _, _, path in scored:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def load_state(self) -> dict[str, Any] | None:
        if self.checkpoints() and not self.resume:
            raise CheckpointError(f"{self.ckpt_dir}: has checkpoints but resume=false; choose a new run_dir")
        return load_latest(self.ckpt_dir)
