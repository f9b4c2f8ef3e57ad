"""Training: the one loop, its config, metrics, sessions and loggers."""

from i2m2_ray.train.config import DatasetConfig, OptimConfig, TrainConfig, load_train_config
from i2m2_ray.train.loop import train

__all__ = ["DatasetConfig", "OptimConfig", "TrainConfig", "load_train_config", "train"]
