"""Where the training loop reports to and resumes from.

The loop only talks to a ``Session``: ``LocalSession`` keeps checkpoints in the run
directory for in-process runs; ``RayTrainSession`` (``i2m2_ray.train.distributed``) and the
Tune session send the same reports to Ray Train or Ray Tune. That is what lets ONE loop run
in a notebook, a Train worker or a Tune trial unchanged.

Optional hooks a distributed session may define (the loop uses them when present):
``sync_epoch(model, train_loss) -> float`` after each training epoch (align buffers, average
the loss over ranks), ``load_model_state(model, state)``, ``optimizer_state(model, optimizer)``
and ``load_optimizer_state(model, optimizer, state)`` for sharded (FSDP) models.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from i2m2_ray.errors import CheckpointError

STATE_FILE = "state.pt"


class Session(Protocol):
    rank: int
    world_size: int

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Wrap for data parallelism (DDP / FSDP) or return as is."""

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full, plain state dict of the unwrapped model (gathered on every rank for FSDP)."""

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Per-epoch metrics; ``state`` is the checkpoint to keep (rank 0 only, else None)."""

    def load_state(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None for a fresh start."""


def save_state(state: dict[str, Any], directory: Path) -> Path:
    """Write a checkpoint atomically: a crash mid-write never leaves a truncated state.pt."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / STATE_FILE)
    return directory / STATE_FILE


def load_state_file(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class LocalSession:
    """In-process runs: ``run_dir/checkpoints/epoch_NNN/state.pt``, keeping the best k and the latest."""

    rank = 0
    world_size = 1

    def __init__(self, run_dir: str | Path, metric: str, mode: str, keep: int = 2, resume: bool = True) -> None:
        self.ckpt_dir = Path(run_dir) / "checkpoints"
        self.metric, self.mode, self.keep, self.resume = f"val/{metric}", mode, keep, resume

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return unwrap(model).state_dict()

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.glob("epoch_*") if (p / STATE_FILE).is_file())

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is None:
            return
        epoch_dir = self.ckpt_dir / f"epoch_{int(metrics['epoch']):03d}"
        save_state(state, epoch_dir)
        (epoch_dir / "metrics.json").write_text(json.dumps(metrics))
        self._prune(latest=epoch_dir)

    def _prune(self, latest: Path) -> None:
        scored = []
        for path in self.checkpoints():
            try:
                value = json.loads((path / "metrics.json").read_text())[self.metric]
            except (OSError, KeyError, ValueError):
                continue
            scored.append((value if self.mode == "max" else -value, path.name, path))
        scored.sort(reverse=True)
        keep = {p for _, _, p in scored[: self.keep]} | {latest}
        for _, _, path in scored:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def load_state(self) -> dict[str, Any] | None:
        found = self.checkpoints()
        if found and not self.resume:
            raise CheckpointError(f"{self.ckpt_dir}: has checkpoints but resume=false; choose a new run_dir")
        return load_state_file(found[-1] / STATE_FILE) if found else None
