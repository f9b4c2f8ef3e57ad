"""A split's Parquet row groups as a Ray Data datasource: the streaming mode's read step.

Why not ``ray.data.read_parquet``: measured on 2 CPUs (Ray 2.60, datasource V2), every execution,
i.e. every streamed epoch, re-lists the files and re-reads their footers on a fresh pool of 32
``FooterReader`` actors (~2 s before any row is read), decodes 128 MiB read units again, and
``randomize_block_order`` on top is an all-to-all barrier that waits for every block. Here the footers
are read once, in the driver; each read task reads a few whole row groups (about ``block_bytes`` of the
needed columns); and shuffling permutes the read tasks per epoch and the rows inside each task's block,
so reading pipelines with training, never holds more than the blocks in flight, and the consumer needs
no shuffle buffer of its own. Blocks are the pyarrow tables Parquet gives: ``arrow.fixed_shape_tensor``
columns stay zero-copy Arrow buffers until the collate step.

With a ``cache_dir``, a read task also keeps its decoded block as an uncompressed Arrow IPC file on its
node, and later epochs map that file instead of decoding Parquet again: Parquet's list levels make a
decode cost ~0.75 CPU-s per 4,000 AV-MNIST rows, a mapped IPC file ~0.002 (``bench/data_throughput.py``).
The first epoch still decodes. Entries are keyed by the file's path, size and mtime, its row groups and
the columns, so a rewritten dataset is never served stale; they are written atomically (several trials
on a node may fill the same entry), and skipped when the disk is nearly full or the file is unreadable.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from i2m2_ray.errors import DataError

DEFAULT_BLOCK_BYTES = 16 * 2**20
# Streamed splits: Ray Data's own default block size (``DataContext.target_max_block_size``). Once decoding is
# cached, a streamed epoch's cost is per block, in the driver's streaming executor, not per byte: a cached
# 4,000-row AV-MNIST epoch (203 MiB) took 0.42 s in 64 MiB units and 0.28 s in 128 MiB units against 0.21 s
# materialized (idle 2 CPUs, median of 7 epochs). Larger units coarsen the block order, so a shuffled read
# task also permutes its rows (one ``take`` in the worker, beside the consumer) instead of the consumer's buffer.
STREAM_BLOCK_BYTES = 128 * 2**20
CACHE_VERSION = 1
CACHE_FREE_MARGIN = 2**30  # keep this much disk free: the cache is an optimisation, never a failure


@dataclass(frozen=True)
class ReadUnit:
    """Consecutive row groups of one file, read by one task into one block."""

    path: str
    row_groups: tuple[int, ...]
    rows: int
    nbytes: int  # uncompressed bytes of the needed columns


def plan_units(files: list[str], columns: list[str], block_bytes: int = DEFAULT_BLOCK_BYTES) -> list[ReadUnit]:
    """Pack each file's row groups, in order, into units of about ``block_bytes`` (at least one group)."""
    units: list[ReadUnit] = []
    wanted = set(columns)
    for path in files:
        try:
            md = pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
        group: list[int] = []
        rows = nbytes = 0
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            size = sum(rg.column(c).total_uncompressed_size for c in range(rg.num_columns)
                       if rg.column(c).path_in_schema.split(".")[0] in wanted)
            if group and nbytes + size > block_bytes:
                units.append(ReadUnit(path, tuple(group), rows, nbytes))
                group, rows, nbytes = [], 0, 0
            group.append(g)
            rows += rg.num_rows
            nbytes += size
        if group:
            units.append(ReadUnit(path, tuple(group), rows, nbytes))
    return units


def cache_entry(unit: ReadUnit, columns: list[str], cache_dir: str | Path) -> Path:
    """Where this node keeps the unit's decoded block: named by everything that determines its content."""
    st = os.stat(unit.path)
    key = [CACHE_VERSION, os.path.realpath(unit.path), st.st_size, st.st_mtime_ns, list(unit.row_groups), columns]
    return Path(cache_dir) / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]}.arrow"


def _read_cached(entry: Path) -> pa.Table | None:
    try:
        return pa.ipc.open_file(pa.memory_map(str(entry))).read_all()  # zero-copy: pages of the mapped file
    except FileNotFoundError:
        return None
    except (pa.ArrowInvalid, OSError):  # torn or foreign file: drop it, decode again
        entry.unlink(missing_ok=True)
        return None


def _write_cached(table: pa.Table, entry: Path) -> None:
    tmp = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(entry.parent).free < table.nbytes + CACHE_FREE_MARGIN:
            return
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, entry)
    except OSError:
        tmp.unlink(missing_ok=True)


def read_unit(unit: ReadUnit, columns: list[str], cache_dir: str | None = None,
              shuffle_seed: list[int] | None = None) -> Iterable[pa.Table]:
    """The read task's body (runs in a Ray worker): one block per unit, only the needed columns; from
    (and into) the node's decoded cache when ``cache_dir`` is set (rows as stored, whatever the seed);
    with ``shuffle_seed``, its rows in the permutation that seed fixes."""
    entry = cache_entry(unit, columns, cache_dir) if cache_dir else None
    table = _read_cached(entry) if entry else None
    if table is None:
        # One thread: Ray already runs a read task per CPU, and pyarrow's pool on top costs CPU time here.
        table = pq.ParquetFile(unit.path).read_row_groups(list(unit.row_groups), columns=columns, use_threads=False)
        if entry:
            _write_cached(table, entry)
    if shuffle_seed is not None:
        table = table.take(np.random.default_rng(shuffle_seed).permutation(table.num_rows))
    yield table


class RowGroupSource(Datasource):
    """Read units planned once; ``get_read_tasks`` (called once per execution, i.e. per epoch) returns
    them in file order, or, when ``seed`` is set, permuted by ``seed`` and the execution count, each
    unit's rows permuted too. ``reshuffle=False`` keeps the first execution's permutation for every
    later one (a materialized read: Ray may execute it again, e.g. to split it, and must get the same rows)."""

    def __init__(self, units: list[ReadUnit], columns: list[str], seed: int | None = None,
                 cache_dir: str | Path | None = None, reshuffle: bool = True) -> None:
        super().__init__()
        self.units, self.columns, self.seed = units, columns, seed
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.reshuffle = reshuffle
        self.executions = 0

    def get_name(self) -> str:
        return "ParquetRowGroups"

    def estimate_inmemory_data_size(self) -> int:
        return sum(u.nbytes for u in self.units)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: object = None) -> list[ReadTask]:
        order = list(range(len(self.units)))
        execution = self.executions if self.reshuffle else 0
        if self.seed is not None:
            order = np.random.default_rng([self.seed, execution]).permutation(len(self.units)).tolist()
        self.executions += 1
        tasks = []
        for i in order:
            unit = self.units[i]
            meta = BlockMetadata(num_rows=unit.rows, size_bytes=int(unit.nbytes), exec_stats=None,
                                 input_files=(unit.path,))
            rows_seed = None if self.seed is None else [self.seed, execution, i]
            tasks.append(ReadTask(functools.partial(read_unit, unit, self.columns, self.cache_dir, rows_seed), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks
