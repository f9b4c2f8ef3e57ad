"""One split's columns as numpy arrays (no torch): what the in-memory reader and the per-node shared copy hold.

Each modality is decoded record batch by record batch straight into a preallocated float32 array,
so a split's peak is its arrays plus one batch: no Arrow table of the whole split, no float64 or
scaled intermediates, and no column the model does not read (a ``--keep-kspace`` fastMRI dataset's
k-space stays on disk unless the model uses it). Row numbers in errors count from the split's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from i2m2_ray.data.format import MANIFEST, Manifest, column_to_numpy, inside, read_table
from i2m2_ray.data.validate import check_unique_ids, validate_dataset
from i2m2_ray.errors import DataError

BATCH_ROWS = 256  # rows decoded at a time: 13 MB of 112x112 float32 spectrograms
# Column chunks are streamed through this buffer; the default (0) reads each whole chunk first, which for
# one row group of 11k spectrograms is a transient 0.5 GB next to the arrays.
STREAM_BUFFER = 8 * 2**20


@dataclass
class SplitArrays:
    """One split: float32 inputs per modality (N, *model_shape), int64 labels (N,) or (N, L), and the
    sample ids (None when the dataset has no id column)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    ids: pa.Array | None = None

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.inputs.values()) + self.labels.nbytes


def split_files(root: str | Path, manifest: Manifest, split: str) -> list[Path]:
    """The split's Parquet files, each checked to be inside the dataset and present."""
    if split not in manifest.splits:
        raise DataError(f"{Path(root) / MANIFEST}: split {split!r} not in manifest (has {', '.join(manifest.splits)})")
    paths = []
    for fname in manifest.splits[split].files:
        if not inside(fname):
            raise DataError(f"{Path(root) / MANIFEST}: splits.{split}.files: {fname!r} is outside the dataset")
        path = Path(root) / fname
        if not path.is_file():
            raise DataError(f"{path}: file listed in the manifest is missing")
        paths.append(path)
    return paths


def read_columns(manifest: Manifest, modalities: list[str]) -> list[str]:
    """The columns a run reads: its modalities', the label and (for the leak check) the sample id."""
    return list(dict.fromkeys([*(manifest.modalities[m].column for m in modalities), manifest.label_column,
                               manifest.id_column]))


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


def read_split(root: str | Path, split: str, manifest: Manifest, modalities: list[str]) -> SplitArrays:
    """Decode ``modalities`` and the labels of one split; NaN/inf, missing columns and bad labels fail
    naming the file(s), the column and the row."""
    paths = split_files(root, manifest, split)
    where = str(Path(root) / ",".join(manifest.splits[split].files))
    try:
        files = [pq.ParquetFile(p, buffer_size=STREAM_BUFFER, pre_buffer=False) for p in paths]
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{where}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
    rows = sum(f.metadata.num_rows for f in files)
    if rows == 0:
        raise DataError(f"{where}: split {split!r} is empty")
    present = set(files[0].schema_arrow.names)
    for name in modalities:
        if manifest.modalities[name].column not in present:
            raise DataError(f"{where}: missing column {manifest.modalities[name].column!r} for modality {name!r}")
    inputs = {m: np.empty((rows, *manifest.modalities[m].model_shape()), np.float32) for m in modalities}
    small = [c for c in (manifest.label_column, manifest.id_column) if c in present]
    offset, tables = 0, []
    for path, pf in zip(paths, files):
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[manifest.modalities[m].column
                                                                         for m in modalities]):
                _decode_batch(pa.Table.from_batches([batch]), manifest, modalities, inputs, offset, where)
                offset += batch.num_rows
            tables.append(pf.read(columns=small))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: unreadable Parquet near row {offset} ({str(exc).splitlines()[0]})") from None
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    labels = labels_to_numpy(table, manifest, where)
    ids = table.column(manifest.id_column).combine_chunks() if manifest.id_column in present else None
    return SplitArrays(inputs, labels, ids)


def _decode_batch(table: pa.Table, manifest: Manifest, modalities: list[str], out: dict[str, np.ndarray],
                  offset: int, where: str) -> None:
    n = table.num_rows
    for name in modalities:
        spec = manifest.modalities[name]
        part = out[name][offset : offset + n]
        part[...] = column_to_numpy(table, spec, where, offset=offset)
        finite = np.isfinite(part.reshape(n, -1)).all(axis=1)
        if not finite.all():
            row = offset + int(np.flatnonzero(~finite)[0])
            raise DataError(f"{where}: column {spec.column!r} row {row}: NaN or inf values")


def read_splits(root: str | Path, manifest: Manifest, modalities: list[str],
                splits: tuple[str, ...], later: tuple[str, ...] = ()) -> dict[str, SplitArrays]:
    """This process's own copy of ``splits`` (validated, ids checked across every split once); the
    ``later`` splits are validated too (footers) so a run fails before training, not after it."""
    validate_dataset(root, deep=False, splits=[*splits, *later])
    arrays = {s: read_split(root, s, manifest, modalities) for s in splits}
    check_split_ids(root, manifest, arrays)
    for a in arrays.values():
        a.ids = None  # checked; not kept alive for the run
    release_arrow_memory()
    return arrays


def release_arrow_memory() -> None:
    """Hand the decode's freed Arrow buffers back to the OS: pyarrow's mimalloc pool otherwise keeps
    them mapped (measured: 0.12 GB of RSS after reading the 11k/1k/2k AV-MNIST rebuild)."""
    pa.default_memory_pool().release_unused()


def check_split_ids(root: str | Path, manifest: Manifest, loaded: dict[str, SplitArrays]) -> None:
    """Sample ids unique across every split: the loaded splits' ids, plus the id column of the others."""
    ids = []
    for split in manifest.splits:
        path = Path(root) / ",".join(manifest.splits[split].files)
        if split in loaded:
            if loaded[split].ids is None:
                return
            ids.append((path, loaded[split].ids))
        else:
            table = read_table(root, manifest, split, [manifest.id_column])
            ids.append((path, table.column(manifest.id_column).combine_chunks()))
    check_unique_ids(ids, manifest.id_column)
