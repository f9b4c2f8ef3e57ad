"""A Ray Train worker's data: its shard of the training split from Ray Data, the held-out splits in RAM.

Used by ``i2m2_ray.train.distributed`` when ``data_mode`` is not ``memory``; Ray is only touched
through the shard handed in, so this module imports without Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from i2m2_ray.data.format import read_table
from i2m2_ray.data.memory import InMemoryData, labels_to_numpy


class RayShardData:
    """Training batches from this worker's Ray Data shard (``get_dataset_shard``: each worker gets an
    equal, disjoint part of every epoch); the validation and test splits, which every rank evaluates
    whole, are read into memory."""

    def __init__(self, root: Path, manifest: Any, modalities: list[str], shard: Any, preshuffled: bool = False) -> None:
        self.manifest, self.modalities, self.shard, self.root = manifest, modalities, shard, root
        self.preshuffled = preshuffled  # the driver's RayBatches.preshuffled: a stream permutes its rows itself
        self.held_out = InMemoryData(root, manifest, modalities, splits=("val", "test"))

    def train_labels(self) -> torch.Tensor:
        """Only the label column, for class weights."""
        table = read_table(self.root, self.manifest, "train", columns=[self.manifest.label_column])
        return torch.from_numpy(labels_to_numpy(table, self.manifest, str(self.root)))

    def train_batches(self, batch_size: int, seed: int, epoch: int, rank: int, world_size: int):
        from i2m2_ray.data.ray_data import iter_torch_batches

        return iter_torch_batches(self.shard, self.manifest, batch_size, shuffle=True, seed=seed, epoch=epoch,
                                  modalities=self.modalities, preshuffled=self.preshuffled)

    def eval_batches(self, split: str, batch_size: int):
        return self.held_out.eval_batches(split, batch_size)

    def has(self, split: str) -> bool:
        return self.held_out.has(split)
