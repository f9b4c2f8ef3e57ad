"""Experiment files (``search_spaces/*.yaml``): what to compare, how to search, what to spend.

Validated completely before Ray starts: unknown keys, bad ranges and unknown variants
fail with one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from i2m2_ray.config import deep_merge, from_dict, load_yaml, parse_overrides, to_dict
from i2m2_ray.errors import ConfigError
from i2m2_ray.models.builder import parse_variant
from i2m2_ray.resources import search_spaces_dir
from i2m2_ray.train.config import DatasetConfig, TrainConfig

DEFAULT_EXPERIMENT = search_spaces_dir() / "default.yaml"
STAGE1_FAMILIES = ("unimodal", "inter")


@dataclass
class SpaceConfig:
    """Log-uniform ranges [low, high] for lr and weight decay; optional categorical choices."""

    lr: list[float] = field(default_factory=lambda: [1e-3, 1e-1])
    weight_decay: list[float] = field(default_factory=lambda: [1e-5, 1e-2])
    optimizer: list[str] | None = None
    batch_size: list[int] | None = None

    def validate(self, where: str = "search") -> None:
        for name in ("lr", "weight_decay"):
            rng = getattr(self, name)
            if len(rng) != 2 or not 0 < rng[0] < rng[1]:
                raise ConfigError(f"{where}.{name}: need a log-uniform range [low, high] with 0 < low < high, got {rng}")
        if self.optimizer is not None:
            bad = [o for o in self.optimizer if o not in ("sgd", "adamw")]
            if bad or not self.optimizer:
                raise ConfigError(f"{where}.optimizer: choices must be sgd or adamw, got {self.optimizer}")
        if self.batch_size is not None and (not self.batch_size or min(self.batch_size) < 1):
            raise ConfigError(f"{where}.batch_size: choices must be positive integers, got {self.batch_size}")


@dataclass
class BudgetConfig:
    trials: int = 4  # per variant
    max_epochs: int = 8
    grace_period: int = 2  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2
    concurrency: int | None = None  # trials at once; None = as many as the CPUs allow

    def validate(self, where: str = "budget") -> None:
        if self.trials < 1 or self.max_epochs < 1:
            raise ConfigError(f"{where}: trials and max_epochs must be >= 1")
        if not 1 <= self.grace_period <= self.max_epochs:
            raise ConfigError(f"{where}.grace_period: must be in [1, max_epochs={self.max_epochs}], got {self.grace_period}")
        if self.reduction_factor < 2:
            raise ConfigError(f"{where}.reduction_factor: must be >= 2, got {self.reduction_factor}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"{where}.concurrency: must be >= 1 or null, got {self.concurrency}")


@dataclass
class ResourcesConfig:
    cpus_per_trial: float = 1.0  # per in-process trial (its torch threads), or per Train worker
    workers: int = 1  # Ray Train workers per trial; 1 runs in-process (no worker-group start-up)
    gpus_per_worker: float = 0.0

    def validate(self, where: str = "resources") -> None:
        if self.cpus_per_trial <= 0 or self.workers < 1 or self.gpus_per_worker < 0:
            raise ConfigError(f"{where}: cpus_per_trial > 0, workers >= 1 and gpus_per_worker >= 0 required")


@dataclass
class FinalConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    from_scratch: bool = False  # stage 2 without stage-1 initialisation (the paper's ablation)

    def validate(self, where: str = "final") -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{where}.seeds: need at least one seed, all distinct, got {self.seeds}")


@dataclass
class ExperimentConfig:
    name: str = "default"
    output_dir: str = "runs/default"
    seed: int = 0  # seeds the Optuna sampler; trial seeds come from train.seed and final.seeds
    variants: list[str] = field(default_factory=lambda: [
        "unimodal:image", "unimodal:audio", "inter:lf", "inter:lrtf", "intra", "i2m2:lf", "i2m2:lrtf"])
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys shared by every trial
    search: SpaceConfig = field(default_factory=SpaceConfig)
    search_overrides: dict[str, SpaceConfig] = field(default_factory=dict)  # per variant
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    metric: str = "accuracy"
    mode: str = "max"

    def validate(self, where: str = "") -> None:
        if not self.variants:
            raise ConfigError("variants: list at least one variant")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants: duplicates in {self.variants}")
        for key in ("variant", "run_dir", "dataset", "epochs", "seed", "init", "metric", "mode", "workers",
                    "cpus_per_worker", "gpus_per_worker", "threads"):
            if key in self.train:
                raise ConfigError(f"train.{key}: set by the experiment (use the top-level key or budget)")
        for name in self.search_overrides:
            if name not in self.variants:
                raise ConfigError(f"search_overrides.{name}: not one of the experiment's variants")
        self.base_train_config()  # unknown or invalid train.* keys fail here, before Ray starts

    def space_for(self, variant: str) -> SpaceConfig:
        return self.search_overrides.get(variant, self.search)

    def base_train_config(self, **extra: Any) -> TrainConfig:
        data = deep_merge(self.train, {"dataset": to_dict(self.dataset), "epochs": self.budget.max_epochs,
                                       "metric": self.metric, "mode": self.mode, **extra})
        return from_dict(TrainConfig, data)

    def stage1(self) -> list[str]:
        return [v for v in self.variants if v.split(":")[0] in STAGE1_FAMILIES]

    def stage2(self) -> list[str]:
        return [v for v in self.variants if v.split(":")[0] not in STAGE1_FAMILIES]


def check_variants(exp: ExperimentConfig, modalities: list[str]) -> None:
    """Variant names against the dataset, and stage-2 variants against what stage 1 provides."""
    for name in exp.variants:
        parse_variant(name, modalities)
    if exp.final.from_scratch:
        return
    for name in exp.stage2():
        family, _, fusion = name.partition(":")
        needed = [f"unimodal:{m}" for m in modalities] + ([f"inter:{fusion}"] if family == "i2m2" else [])
        missing = [n for n in needed if n not in exp.variants]
        if missing:
            raise ConfigError(f"variant {name!r} is initialised from {', '.join(missing)}: add it to variants "
                              "or set final.from_scratch=true")


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    data = load_yaml(path or DEFAULT_EXPERIMENT)
    data = deep_merge(data, parse_overrides(overrides or []))
    return from_dict(ExperimentConfig, data)
