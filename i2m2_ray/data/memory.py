"""In-memory splits (``InMemoryData``) and the batch iterator the loop uses when a dataset fits in RAM.

Batches are slices of preloaded tensors, so the loop pays no DataLoader overhead.
Sharding gives each of ``world_size`` ranks a disjoint, equal-sized part of every
epoch's permutation, so each sample is seen once per epoch across workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from i2m2_ray.data.format import Manifest, column_to_numpy, read_table
from i2m2_ray.data.validate import check_unique_ids, validate_dataset
from i2m2_ray.errors import DataError

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


@dataclass
class TensorSplit:
    """One split held as tensors: inputs per modality, labels (N,) or (N, L)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit({k: v[index] for k, v in self.inputs.items()}, self.labels[index])


def labels_to_numpy(table: pa.Table, manifest: Manifest, where: str) -> np.ndarray:
    """Labels as int64: (N,) class ids or (N, L) 0/1 vectors, range-checked."""
    if manifest.label_column not in table.column_names:
        raise DataError(f"{where}: missing label column {manifest.label_column!r}")
    col = table.column(manifest.label_column).combine_chunks()
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: column {manifest.label_column!r} row {row}: missing label")
    if manifest.task == "multiclass":
        y = col.to_numpy(zero_copy_only=False).astype(np.int64)
        bad = np.flatnonzero((y < 0) | (y >= manifest.num_classes))
    else:
        if isinstance(col.type, pa.FixedShapeTensorType):
            y = col.to_numpy_ndarray().astype(np.int64)
        else:
            y = np.stack(col.to_numpy(zero_copy_only=False)).astype(np.int64)
        if y.ndim != 2 or y.shape[1] != len(manifest.classes):
            raise DataError(f"{where}: column {manifest.label_column!r} has shape {list(y.shape[1:])}, "
                            f"manifest lists {len(manifest.classes)} labels")
        bad = np.flatnonzero(((y != 0) & (y != 1)).any(axis=1))
    if bad.size:
        raise DataError(f"{where}: column {manifest.label_column!r} row {int(bad[0])}: label "
                        f"{y[bad[0]].tolist()} out of range for {manifest.task} with {len(manifest.classes)} classes")
    return y


def load_split(root: str | Path, split: str, manifest: Manifest | None = None,
               modalities: list[str] | None = None) -> TensorSplit:
    """Read one split into tensors; NaN/inf, missing columns and bad labels fail naming file, column, row.

    The quick validation (manifest, footers, schema, row counts) runs first; the data checks a deep
    validation would do are done here on the decoded arrays, so nothing is read twice.
    """
    checked = validate_dataset(root, deep=False, splits=[split])
    manifest = manifest or checked
    names = modalities or list(manifest.modalities)
    where = str(Path(root) / ",".join(manifest.splits[split].files)) if split in manifest.splits else str(root)
    table = read_table(root, manifest, split)
    if table.num_rows == 0:
        raise DataError(f"{where}: split {split!r} is empty")
    inputs = {}
    for name in names:
        spec = manifest.modalities[name]
        if spec.column not in table.column_names:
            raise DataError(f"{where}: missing column {spec.column!r} for modality {name!r}")
        arr = column_to_numpy(table, spec, where)
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{where}: column {spec.column!r} row {row}: NaN or inf values")
        inputs[name] = torch.from_numpy(arr)
    labels = torch.from_numpy(labels_to_numpy(table, manifest, where))
    if manifest.id_column in table.column_names:
        ids = [(Path(where), table.column(manifest.id_column).combine_chunks())]
        for other in manifest.splits:
            if other != split:
                path = Path(root) / ",".join(manifest.splits[other].files)
                ids.append((path, read_table(root, manifest, other, [manifest.id_column])
                            .column(manifest.id_column).combine_chunks()))
        check_unique_ids(ids, manifest.id_column)
    return TensorSplit(inputs, labels)


def iterate_batches(
    data: TensorSplit,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Yield (inputs, labels) batches; the order depends only on (seed, epoch), so resumed runs match."""
    n = len(data)
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    if world_size > 1:
        per_rank = n // world_size
        order = order[: per_rank * world_size].view(per_rank, world_size)[:, rank]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if shuffle or world_size > 1:
            yield {k: v[idx] for k, v in data.inputs.items()}, data.labels[idx]
        else:
            end = start + batch_size
            yield {k: v[start:end] for k, v in data.inputs.items()}, data.labels[start:end]


class InMemoryData:
    """A dataset's splits as tensors in RAM, read once; batches are tensor slices (no DataLoader)."""

    def __init__(self, root: Path, manifest: Manifest, modalities: list[str],
                 splits: tuple[str, ...] = ("train", "val", "test")) -> None:
        self.manifest = manifest
        self.splits = {s: load_split(root, s, manifest, modalities) for s in splits if s in manifest.splits}
        for split in ("train", "val"):
            if split in splits and split not in self.splits:
                raise DataError(f"{root}: dataset has no {split!r} split")

    def train_labels(self) -> torch.Tensor:
        return self.splits["train"].labels

    def train_batches(self, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> Iterator[Batch]:
        return iterate_batches(self.splits["train"], batch_size, shuffle=True, seed=seed, epoch=epoch,
                               rank=rank, world_size=world_size)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        return iterate_batches(self.splits[split], batch_size, shuffle=False)

    def has(self, split: str) -> bool:
        return split in self.splits
