"""Ray Data reader: Parquet splits -> ``(inputs, labels)`` torch batches, streamed or materialized.

Batches have exactly the structure of :func:`i2m2_ray.data.memory.iterate_batches`:
``inputs[modality]`` float32 ``(B, *ModalitySpec.model_shape())`` (waveforms padded with zeros to
the manifest's ``max_samples`` in the collate step, scaled to [-1, 1]) and int64 labels ``(B,)`` or
``(B, L)``. The collate step works on pyarrow tables, so the ragged ``list<int16>`` audio column never
has to become a torch tensor inside Ray.

Modes (costs measured on a 2-CPU machine):
- ``"materialize"``: ``read_parquet`` runs once, in the driver, and the blocks stay in the object
  store; every epoch iterates from memory (first batch ~0.15 s, ~10k image+audio rows/s/worker).
  It also sidesteps the CPU deadlock: no read task needs a CPU once the trainers hold them all.
- ``"stream"``: the read pipeline runs again every epoch (3-7 s before the first batch) with bounded
  memory; it needs at least one CPU free of Train workers or ``read_parquet`` waits forever.

:func:`choose_mode` rule: ``override`` argument, else env ``I2M2_DATA_MODE``, else "materialize" when the
uncompressed size of the needed columns is at most ``memory_fraction`` (0.5) of the object store
(the cluster's ``object_store_memory`` when Ray is up, else 30 % of RAM, Ray's default store size),
else "stream". E.g. with the 7.3 GB default store of a 24 GB machine, the full AV-MNIST train split
(55k rows, ~2.9 GB) is materialized, the full fastMRI single-coil knee train split (~28 GB) is streamed.
Streaming while Train workers reserve every CPU is refused with a ``DataError``.

In a Ray Train worker::

    # driver
    reader = RayBatches(dataset_dir, "train", batch_size=64, shuffle=True)   # validates, picks the mode
    trainer = TorchTrainer(train_fn, datasets={"train": reader.dataset}, ...)
    # train_fn (each worker gets a disjoint streaming_split shard)
    shard = ray.train.get_dataset_shard("train")
    manifest = load_manifest(dataset_dir)
    for inputs, labels in iter_torch_batches(shard, manifest, 64, shuffle=True, seed=seed, epoch=epoch):
        ...

Without Ray Train (unit tests, single process): ``RayBatches(...).iter_batches(epoch, rank=, world_size=)``
shards with ``Dataset.split(world_size, equal=True)``. The same reader without Ray at all is
:func:`i2m2_ray.data.memory.load_split` + ``iterate_batches``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from i2m2_ray.data.format import Manifest, column_to_numpy
from i2m2_ray.data.memory import Batch, labels_to_numpy
from i2m2_ray.data.validate import validate_dataset
from i2m2_ray.errors import DataError

if TYPE_CHECKING:
    import ray.data

Mode = Literal["materialize", "stream"]
MODE_ENV = "I2M2_DATA_MODE"


def needed_columns(manifest: Manifest, modalities: list[str] | None = None) -> list[str]:
    """The columns a training batch needs: modalities, label, (no ids, no strings)."""
    names = modalities or list(manifest.modalities)
    for n in names:
        if n not in manifest.modalities:
            raise DataError(f"manifest.json: unknown modality {n!r} (has {', '.join(manifest.modalities)})")
    return [manifest.modalities[n].column for n in names] + [manifest.label_column]


def estimate_bytes(dataset_dir: str | Path, splits: list[str] | None = None,
                   modalities: list[str] | None = None) -> int:
    """Uncompressed Arrow size of the needed columns over ``splits``, from Parquet footers only."""
    root = Path(dataset_dir)
    manifest = validate_dataset(root, deep=False)
    cols = set(needed_columns(manifest, modalities))
    total = 0
    for split in splits or list(manifest.splits):
        for fname in manifest.splits[split].files:
            md = pq.ParquetFile(root / fname).metadata
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                for c in range(rg.num_columns):
                    col = rg.column(c)
                    if col.path_in_schema.split(".")[0] in cols:
                        total += col.total_uncompressed_size
    return total


def _object_store_bytes() -> int:
    try:
        import ray

        if ray.is_initialized():
            return int(ray.cluster_resources().get("object_store_memory", 0))
    except ImportError:
        pass
    return int(0.3 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _free_cpus(reserved_cpus: float) -> float | None:
    import ray

    if not ray.is_initialized():
        return None
    return float(ray.cluster_resources().get("CPU", 0)) - reserved_cpus


def choose_mode(dataset_dir: str | Path, splits: list[str] | None = None, *, modalities: list[str] | None = None,
                override: str | None = None, memory_fraction: float = 0.5, reserved_cpus: float = 0.0) -> Mode:
    """'materialize' if the data fits in ``memory_fraction`` of the object store, else 'stream' (see module doc).

    ``reserved_cpus``: CPUs the Train workers will hold; streaming needs at least one more.
    """
    choice = override or os.environ.get(MODE_ENV) or "auto"
    if choice not in ("auto", "materialize", "stream"):
        raise DataError(f"data mode must be auto, materialize or stream, got {choice!r}")
    if choice == "auto":
        fits = estimate_bytes(dataset_dir, splits, modalities) <= memory_fraction * _object_store_bytes()
        choice = "materialize" if fits else "stream"
    free = _free_cpus(reserved_cpus)
    if choice == "stream" and free is not None and free < 1:
        raise DataError(f"{dataset_dir}: streaming needs a CPU free of Train workers ({free:g} left after "
                        f"reserving {reserved_cpus:g}); read_parquet would wait forever. Use fewer CPUs per "
                        f"worker or materialize")
    return choice  # type: ignore[return-value]


def collate(table: pa.Table, manifest: Manifest, modalities: list[str] | None = None,
            where: str = "ray batch") -> Batch:
    """pyarrow batch -> (inputs, labels): decode tensors, pad ragged waveforms, int64 labels."""
    names = modalities or list(manifest.modalities)
    inputs = {n: torch.from_numpy(column_to_numpy(table, manifest.modalities[n], where)) for n in names}
    return inputs, torch.from_numpy(labels_to_numpy(table, manifest, where))


def iter_torch_batches(source: ray.data.Dataset | ray.data.DataIterator, manifest: Manifest, batch_size: int, *,
                       shuffle: bool = False, seed: int = 0, epoch: int = 0, modalities: list[str] | None = None,
                       drop_last: bool = False, shuffle_buffer: int | None = None,
                       prefetch_batches: int = 1) -> Iterator[Batch]:
    """Yield (inputs, labels) from a Ray Dataset or a Train shard (``get_dataset_shard``).

    Shuffling: block order randomised per (seed, epoch) when ``source`` is a Dataset, plus a local
    shuffle buffer seeded by (seed, epoch); it approximates a full permutation without an all-to-all shuffle.
    """
    import ray.data

    ep_seed = seed * 1_000_003 + epoch
    kwargs: dict[str, Any] = {"batch_size": batch_size, "batch_format": "pyarrow", "drop_last": drop_last,
                              "prefetch_batches": prefetch_batches}
    if shuffle:
        if isinstance(source, ray.data.Dataset):
            source = source.randomize_block_order(seed=ep_seed)
        kwargs["local_shuffle_buffer_size"] = shuffle_buffer or max(4 * batch_size, 1024)
        kwargs["local_shuffle_seed"] = ep_seed
    for table in source.iter_batches(**kwargs):
        yield collate(table, manifest, modalities)


class RayBatches:
    """One split as a Ray Dataset (validated, mode chosen) with an ``iter_batches(epoch)`` method."""

    def __init__(self, dataset_dir: str | Path, split: str, batch_size: int, *, mode: str = "auto",
                 modalities: list[str] | None = None, shuffle: bool = False, seed: int = 0,
                 reserved_cpus: float = 0.0) -> None:
        import ray
        import ray.data

        if not ray.is_initialized():
            raise DataError("Ray is not initialised: call ray.init() first (or use i2m2_ray.data.memory)")
        self.root = Path(dataset_dir)
        self.manifest = validate_dataset(self.root, deep=False, splits=[split])
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.modalities = modalities or list(self.manifest.modalities)
        self.mode: Mode = choose_mode(self.root, [split], modalities=self.modalities,
                                      override=None if mode == "auto" else mode, reserved_cpus=reserved_cpus)
        files = [str(self.root / f) for f in self.manifest.splits[split].files]
        ds = ray.data.read_parquet(files).select_columns(needed_columns(self.manifest, self.modalities))
        self.dataset: ray.data.Dataset = ds.materialize() if self.mode == "materialize" else ds
        self._shards: dict[int, list[ray.data.Dataset]] = {}

    def iter_batches(self, epoch: int = 0, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """One epoch of batches; with ``world_size`` > 1, this rank's equal, disjoint share."""
        ds = self.dataset
        if world_size > 1:
            if world_size not in self._shards:
                self._shards[world_size] = ds.split(world_size, equal=True)
            ds = self._shards[world_size][rank]
        yield from iter_torch_batches(ds, self.manifest, self.batch_size, shuffle=self.shuffle, seed=self.seed,
                                      epoch=epoch, modalities=self.modalities)

    def __len__(self) -> int:
        return self.manifest.splits[self.split].rows

