"""Training: the one loop, its config, metrics, sessions and loggers.

Exports resolve lazily (PEP 562) so ``i2m2_ray.train.loop`` and the models import with torch
and numpy only (no yaml, pyarrow or Ray), e.g. on a bare GPU box for ``bench/gpu_throughput.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DatasetConfig", "OptimConfig", "TrainConfig", "load_train_config", "run_training", "train"]

_WHERE = {"DatasetConfig": "config", "OptimConfig": "config", "TrainConfig": "config",
          "load_train_config": "config", "train": "loop", "run_training": "distributed"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"i2m2_ray.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'i2m2_ray.train' has no attribute {name!r}")
