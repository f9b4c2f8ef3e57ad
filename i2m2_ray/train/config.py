"""The run config: one variant, one dataset, one optimiser setting. Loaded from YAML + overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from i2m2_ray.config import deep_merge, from_dict, load_yaml, parse_overrides
from i2m2_ray.data.synthetic import SyntheticConfig
from i2m2_ray.errors import ConfigError
from i2m2_ray.models.builder import ModelConfig

METRICS = ("accuracy", "balanced_accuracy", "auroc", "loss", "ece")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement-group strategies


@dataclass
class DatasetConfig:
    """A prepared dataset directory, or (``path: null``) the built-in generator with its knobs."""

    path: str | None = field(default=None, metadata={"path": True})
    builtin: SyntheticConfig = field(default_factory=SyntheticConfig)
    # where the built-in dataset is written; default $I2M2_CACHE or ~/.cache/i2m2_ray
    cache_dir: str | None = field(default=None, metadata={"path": True})
    # data_mode=stream: each node keeps the decoded blocks under <cache_dir>/stream (Arrow IPC) so epochs
    # after the first map them instead of decoding Parquet again; false: decode every epoch
    stream_cache: bool = True

    def __post_init__(self) -> None:
        # Tune and Train run trials in other working directories: a relative path must mean the caller's.
        for name in ("path", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, str) and value:
                setattr(self, name, str(Path(value).expanduser().resolve()))


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = field(default=0.01, metadata={"gt": 0})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0})
    momentum: float = field(default=0.0, metadata={"ge": 0, "lt": 1})  # SGD only
    grad_clip: float | None = field(default=8.0, metadata={"gt": 0})
    # the GLOBAL batch: with N workers each takes batch_size / N per step
    batch_size: int = field(default=40, metadata={"ge": 1, "le": 2**31 - 1})

    def validate(self, where: str = "optim") -> None:
        if self.name not in ("sgd", "adamw"):
            raise ConfigError(f"{where}.name: unknown optimizer {self.name!r} (sgd, adamw)")


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as ``config.yaml`` in its run directory."""

    variant: str = "i2m2:lf"
    seed: int = field(default=0, metadata={"ge": 0, "lt": 2**32})
    epochs: int = field(default=10, metadata={"ge": 1})
    # epochs without val improvement before stopping; null = never
    patience: int | None = field(default=10, metadata={"ge": 1})
    metric: str = "accuracy"  # validation metric for early stopping and the best checkpoint
    mode: str = "max"
    class_weighted: bool = False  # inverse-frequency class weights (per head for multi-label)
    # probability that a training row loses one modality (drawn uniformly) and every expert reading it,
    # so the product of the remaining experts learns to stand alone; 0 = off. Intra / I2M2 only: it
    # changes nothing for unimodal and inter models, where no expert would remain.
    modality_dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    eval_batch_size: int = field(default=256, metadata={"ge": 1, "le": 2**31 - 1})
    run_dir: str = field(default="runs/train", metadata={"path": True})
    resume: bool = True  # continue from the last checkpoint in run_dir
    keep_checkpoints: int = field(default=2, metadata={"ge": 1})  # best k by the metric (the latest is kept too)
    threads: int | None = field(default=None, metadata={"ge": 1, "le": 1024})  # torch intra-op threads; null = default
    gpu: bool | str = "auto"  # auto | true | false
    tensorboard: bool = True
    workers: int = field(default=1, metadata={"ge": 1})  # data-parallel workers; > 1 runs under Ray Train
    strategy: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard: for encoders too large to replicate)
    launcher: str = "auto"  # auto (in-process for 1 worker, Ray Train above) | local | ray
    cpus_per_worker: float = field(default=1.0, metadata={"ge": 0})
    # Ray placement of the worker group: PACK (Ray's default) fills a node first, keeping gradient traffic
    # inside it; SPREAD puts workers on distinct nodes where it can (one per machine, e.g. one GPU each)
    placement_strategy: str = "PACK"
    gpus_per_worker: float = field(default=1.0, metadata={"ge": 0})  # used when the run uses GPUs
    # worker-group restarts from the last checkpoint before the run fails
    max_failures: int = field(default=1, metadata={"ge": -1, "hint": "-1 = unlimited"})
    # How Ray Train workers get training batches: memory (each worker reads the splits into RAM),
    # or Ray Data shards: materialize (read once in the driver), stream (read every epoch; for data
    # larger than the object store), auto (materialize if it fits in half the object store).
    data_mode: str = "memory"
    # expert (modality or "inter") -> stage-1 state dict
    init: dict[str, str] = field(default_factory=dict, metadata={"path": True})
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self, where: str = "") -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"metric: unknown metric {self.metric!r} ({', '.join(METRICS)})")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode: must be max or min, got {self.mode!r}")
        if str(self.gpu).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"gpu: must be auto, true or false, got {self.gpu!r}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"strategy: must be ddp or fsdp, got {self.strategy!r}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(f"placement_strategy: must be one of {', '.join(PLACEMENT_STRATEGIES)}, "
                              f"got {self.placement_strategy!r}")
        if self.launcher not in ("auto", "local", "ray"):
            raise ConfigError(f"launcher: must be auto, local or ray, got {self.launcher!r}")
        if self.launcher == "local" and self.workers > 1:
            raise ConfigError(f"launcher=local runs one worker in-process; workers={self.workers} needs auto or ray")
        if self.optim.batch_size % self.workers:
            raise ConfigError(f"optim.batch_size: {self.optim.batch_size} is the global batch and must be "
                              f"divisible by workers={self.workers}")
        if self.data_mode not in ("memory", "auto", "materialize", "stream"):
            raise ConfigError(f"data_mode: must be memory, auto, materialize or stream, got {self.data_mode!r}")
        if self.data_mode != "memory" and (self.launcher == "local" or (self.launcher == "auto" and self.workers == 1)):
            raise ConfigError(f"data_mode={self.data_mode} feeds Ray Train workers: it needs workers > 1 or "
                              "launcher=ray (in-process runs read the splits into memory)")


def default_config_path() -> Path:
    return Path(str(resources.files("i2m2_ray") / "configs" / "train.yaml"))


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      extra: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- ``extra`` mapping <- ``key=value`` overrides, validated in one go."""
    data = load_yaml(path or default_config_path())
    if extra:
        data = deep_merge(data, extra)
    data = deep_merge(data, parse_overrides(overrides or []))
    return from_dict(TrainConfig, data)
