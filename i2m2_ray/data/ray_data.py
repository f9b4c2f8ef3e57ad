"""Ray Data reader: Parquet splits -> ``(inputs, labels)`` torch batches, streamed or materialized.

Batches have exactly the structure of :func:`i2m2_ray.data.memory.iterate_batches`:
``inputs[modality]`` float32 ``(B, *ModalitySpec.model_shape())`` (waveforms padded with zeros to
the manifest's ``max_samples`` in the collate step, scaled to [-1, 1]) and int64 labels ``(B,)`` or
``(B, L)``. The collate step works on pyarrow tables, so the ragged ``list<int16>`` audio column never
has to become a torch tensor inside Ray.

Modes (both read through :mod:`i2m2_ray.data.ray_source`: footers read once, one block per few row
groups, only the needed columns; costs in ``bench/results/data_throughput.md``):
- ``"materialize"``: the read runs once, in the driver, and the blocks stay in the object store;
  every epoch iterates from memory. It also sidesteps the CPU deadlock: no read task needs a CPU
  once the trainers hold them all.
- ``"stream"``: the read runs again every epoch, with bounded memory, pipelined with the consumer
  (read tasks permuted per epoch instead of an all-to-all block shuffle); it needs at least one CPU
  free of Train workers or the read tasks wait forever.

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

import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
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
PREFETCH_BATCHES = 4  # batches Ray fetches and collates ahead of the consumer
# Ray's local shuffle buffer holds up to 1,024 rows, and no more than about one stream block of them: 1,024
# fastMRI slices (magnitude + phase, 0.8 MB each) would hold 0.8 GB per worker; at least 4 batches.
SHUFFLE_BUFFER_ROWS, SHUFFLE_BUFFER_BYTES = 1024, 128 * 2**20


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


def shuffle_buffer_rows(manifest: Manifest, batch_size: int, modalities: list[str] | None = None) -> int:
    """Rows in the local shuffle buffer: ``SHUFFLE_BUFFER_ROWS``, fewer for large rows, at least 4 batches."""
    row_bytes = sum(math.prod(manifest.modalities[n].shape) * np.dtype(manifest.modalities[n].dtype).itemsize
                    for n in modalities or manifest.modalities)
    return max(4 * batch_size, min(SHUFFLE_BUFFER_ROWS, SHUFFLE_BUFFER_BYTES // max(1, row_bytes)))


def collate(table: pa.Table, manifest: Manifest, modalities: list[str] | None = None,
            where: str = "ray batch") -> Batch:
    """pyarrow batch -> (inputs, labels): decode tensors, pad ragged waveforms, int64 labels."""
    names = modalities or list(manifest.modalities)
    inputs = {n: torch.from_numpy(column_to_numpy(table, manifest.modalities[n], where)) for n in names}
    return inputs, torch.from_numpy(labels_to_numpy(table, manifest, where))


@functools.cache
def _collate_fn_class() -> type:
    """``collate`` as a Ray ``ArrowBatchCollateFn`` (built on first use: this module imports without Ray).
    Ray calls it in its prefetch threads, so decoding the next batches overlaps the consumer's step."""
    from ray.data.collate_fn import ArrowBatchCollateFn

    class Collate(ArrowBatchCollateFn):
        def __init__(self, manifest: Manifest, modalities: list[str] | None) -> None:
            self.manifest, self.modalities = manifest, modalities

        def __call__(self, table: pa.Table) -> Batch:
            return collate(table, self.manifest, self.modalities)

    return Collate


def iter_torch_batches(source: ray.data.Dataset | ray.data.DataIterator, manifest: Manifest, batch_size: int, *,
                       shuffle: bool = False, seed: int = 0, epoch: int = 0, modalities: list[str] | None = None,
                       drop_last: bool = False, shuffle_buffer: int | None = None, preshuffled: bool = False,
                       prefetch_batches: int = PREFETCH_BATCHES) -> Iterator[Batch]:
    """Yield (inputs, labels) from a Ray Dataset or a Train shard (``get_dataset_shard``).

    Shuffling here is Ray's local shuffle buffer (:func:`shuffle_buffer_rows`) seeded by (seed, epoch); the
    block order is shuffled upstream (``RayBatches``: read tasks and the rows inside each permuted per epoch
    when streaming, ``randomize_block_order`` when materialized), which together approximate a full
    permutation without an all-to-all shuffle. ``preshuffled``: the rows come permuted already (a shuffled
    stream, :attr:`RayBatches.preshuffled`), so there is no buffer: it would copy every row once more on the
    consumer's side (a cached AV-MNIST stream ran at 0.7x materialized with it, 1.0x without). Batches are
    collated in Ray's prefetch threads (``iter_torch_batches(collate_fn=...)``), on the CPU: the training
    loop moves them to its device.
    """
    kwargs: dict[str, Any] = {"batch_size": batch_size, "drop_last": drop_last, "device": "cpu",
                              "prefetch_batches": prefetch_batches,
                              "collate_fn": _collate_fn_class()(manifest, modalities)}
    if shuffle and not preshuffled:
        kwargs["local_shuffle_buffer_size"] = shuffle_buffer or shuffle_buffer_rows(manifest, batch_size, modalities)
        kwargs["local_shuffle_seed"] = seed * 1_000_003 + epoch
    yield from source.iter_torch_batches(**kwargs)


class RayBatches:
    """One split as a Ray Dataset (validated, mode chosen) with an ``iter_batches(epoch)`` method.

    Both modes read through :class:`~i2m2_ray.data.ray_source.RowGroupSource` (footers read once,
    here; one block per few row groups; only the needed columns). ``dataset`` is what Ray Train gets:
    materialized, or a stream whose read order is permuted on every execution (epoch) when ``shuffle``.
    """

    def __init__(self, dataset_dir: str | Path, split: str, batch_size: int, *, mode: str = "auto",
                 modalities: list[str] | None = None, shuffle: bool = False, seed: int = 0,
                 reserved_cpus: float = 0.0, block_bytes: int | None = None,
                 cache_dir: str | Path | None = None) -> None:
        import ray

        from i2m2_ray.data.ray_source import DEFAULT_BLOCK_BYTES, STREAM_BLOCK_BYTES, plan_units

        if not ray.is_initialized():
            raise DataError("Ray is not initialised: call ray.init() first (or use i2m2_ray.data.memory)")
        self.root = Path(dataset_dir)
        self.manifest = validate_dataset(self.root, deep=False, splits=[split])
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.cache_dir = cache_dir  # a stream's decoded blocks, per node (see ray_source); None: decode every epoch
        self.modalities = modalities or list(self.manifest.modalities)
        self.mode: Mode = choose_mode(self.root, [split], modalities=self.modalities,
                                      override=None if mode == "auto" else mode, reserved_cpus=reserved_cpus)
        self.columns = needed_columns(self.manifest, self.modalities)
        self.units = plan_units([str(self.root / f) for f in self.manifest.splits[split].files], self.columns,
                                block_bytes or (STREAM_BLOCK_BYTES if self.mode == "stream" else DEFAULT_BLOCK_BYTES))
        if self.mode == "materialize":
            # Shuffled: units and rows permuted once, here; Ray Train workers get this block order every epoch.
            self.dataset: ray.data.Dataset = self._read(seed if shuffle else None, reshuffle=False).materialize()
        else:
            self.dataset = self._read(seed if shuffle else None)
        self._shards: dict[int, list[ray.data.Dataset]] = {}

    @property
    def preshuffled(self) -> bool:
        """Whether the read tasks deliver every epoch's rows permuted (a shuffled stream): the consumer then
        needs no local shuffle buffer (``iter_torch_batches(preshuffled=True)``)."""
        return self.shuffle and self.mode == "stream"

    def _read(self, seed: int | None, reshuffle: bool = True) -> ray.data.Dataset:
        import ray.data

        from i2m2_ray.data.ray_source import RowGroupSource

        # One output block per read task: Ray would otherwise cut each into ~200 / len(units) pieces.
        cache = self.cache_dir if self.mode == "stream" else None  # a materialized split is decoded once anyway
        ds = ray.data.read_datasource(RowGroupSource(self.units, self.columns, seed, cache, reshuffle),
                                      override_num_blocks=len(self.units))
        # Blocks in read-task order, not completion order: file order unshuffled, and a shuffled epoch
        # depends only on (seed, epoch). Read tasks are of similar size, so waiting in order costs little.
        ds.context.execution_options.preserve_order = True
        return ds

    def epoch_dataset(self, epoch: int) -> ray.data.Dataset:
        """This epoch's Dataset; with ``shuffle`` its block order depends only on (seed, epoch)."""
        if not self.shuffle:
            return self.dataset
        ep_seed = self.seed * 1_000_003 + epoch
        if self.mode == "materialize":
            return self.dataset.randomize_block_order(seed=ep_seed)
        return self._read(ep_seed)  # a barrier-free shuffle: the read tasks come in a permuted order

    def iter_batches(self, epoch: int = 0, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """One epoch of batches; with ``world_size`` > 1, this rank's equal, disjoint share."""
        ds = self.epoch_dataset(epoch) if world_size == 1 else self.dataset
        if world_size > 1:
            if world_size not in self._shards:
                self._shards[world_size] = ds.split(world_size, equal=True)
            ds = self._shards[world_size][rank]
        yield from iter_torch_batches(ds, self.manifest, self.batch_size, shuffle=self.shuffle, seed=self.seed,
                                      epoch=epoch, modalities=self.modalities, preshuffled=self.preshuffled)

    def __len__(self) -> int:
        return self.manifest.splits[self.split].rows

