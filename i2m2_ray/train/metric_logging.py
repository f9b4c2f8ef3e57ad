"""Metric loggers: one small interface, console and TensorBoard behind it.

Namespaces are fixed: ``train/*``, ``val/*``, ``val/<metric>_best``, ``expert/<name>/*``,
``test/*``, so every run's curves line up in TensorBoard.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np


class MetricLogger(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_predictions(self, step: int, log_probs: np.ndarray, labels: np.ndarray,
                        class_names: list[str]) -> None: ...

    def close(self) -> None: ...


class ConsoleLogger:
    """One line per epoch: the numbers a person watches while a run trains."""

    def __init__(self, metric: str, epochs: int, stream: TextIO | None = None, prefix: str = "") -> None:
        self.metric, self.epochs, self.prefix = metric, epochs, prefix
        self.stream = stream or sys.stdout

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if "train/loss" not in metrics:  # test-split summaries are printed by the caller
            return
        m = self.metric
        parts = [f"{self.prefix}epoch {step:>3}/{self.epochs}",
                 f"train loss {metrics.get('train/loss', float('nan')):.4f}",
                 f"val loss {metrics.get('val/loss', float('nan')):.4f}",
                 f"val {m} {metrics.get(f'val/{m}', float('nan')):.4f}",
                 f"best {metrics.get(f'val/{m}_best', float('nan')):.4f}",
                 f"{metrics.get('time/epoch_s', 0.0):.1f}s",
                 f"{metrics.get('train/samples_per_s', 0.0):.0f} samples/s"]
        print("  ".join(parts), file=self.stream, flush=True)

    def log_predictions(self, step: int, log_probs: np.ndarray, labels: np.ndarray,
                        class_names: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def confusion_image(cm: np.ndarray, cell: int = 16) -> np.ndarray:
    """Row-normalised confusion matrix as an (H, W, 3) uint8 heat map (no plotting library needed)."""
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    norm = cm / rows
    img = np.kron(norm, np.ones((cell, cell)))
    rgb = np.stack([img, img * 0.6, 1.0 - img], axis=-1)
    return (rgb * 255).astype(np.uint8)


class TensorBoardLogger:
    """Scalars per epoch, a confusion-matrix image (multiclass) or PR curves (multi-label)."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)) and not np.isnan(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_predictions(self, step: int, log_probs: np.ndarray, labels: np.ndarray,
                        class_names: list[str]) -> None:
        from i2m2_ray.train.metrics import confusion_matrix

        if log_probs.ndim == 2:
            cm = confusion_matrix(log_probs.argmax(axis=1), labels, log_probs.shape[1])
            self.writer.add_image("val/confusion_matrix", confusion_image(cm), step, dataformats="HWC")
        else:
            probs = np.exp(log_probs[:, :, 1])
            for h, name in enumerate(class_names):
                self.writer.add_pr_curve(f"val/pr/{name}", labels[:, h], probs[:, h], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
