"""The search service: Ray Tune + Optuna over every variant, in the order the I2M2 method needs.

The public API below resolves lazily (PEP 562): importing ``i2m2_ray.tune`` does not import Ray.
The runner is built from these same functions, so a bench that composes them runs what the service runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_tuner", "init_ray", "load_experiment", "make_sampler", "make_trainable", "metric_key",
           "run_experiment", "sampler_seed", "trial_param_space"]

_WHERE = {"init_ray": "service", "sampler_seed": "service", "make_sampler": "service",
          "trial_param_space": "service", "make_trainable": "service", "build_tuner": "service",
          "metric_key": "service", "load_experiment": "experiment", "run_experiment": "runner"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"i2m2_ray.tune.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'i2m2_ray.tune' has no attribute {name!r}")
