"""Dataset validation: every reader runs it first, every converter runs it before publishing.

Two levels:
- quick (``deep=False``): manifest, files present, Parquet footers readable, row counts equal to the
  manifest, no empty split, every column present with the stored type, shape and dtype the manifest
  declares. It reads only footers, so it costs milliseconds and sits on the path of every training run.
- deep: additionally scans the data row group by row group: NaN/inf, nulls, label range, waveform
  lengths, and duplicate sample ids across all splits.

Every failure is one ``DataError`` line naming the file, the column and (for data errors) the row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from i2m2_ray.data.format import MANIFEST, Manifest, ModalitySpec, load_manifest
from i2m2_ray.errors import DataError


def _open(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise DataError(f"{path}: file listed in the manifest is missing")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})") from None


def _arrow_dtype(dtype: str, where: str) -> pa.DataType:
    try:
        return pa.from_numpy_dtype(np.dtype(dtype))
    except TypeError:
        raise DataError(f"{where}: unknown dtype {dtype!r}") from None


def _check_modality_type(path: Path, name: str, spec: ModalitySpec, typ: pa.DataType, manifest_path: Path) -> None:
    col = spec.column
    if spec.kind == "waveform":
        if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)) or typ.value_type != pa.int16():
            raise DataError(f"{path}: column {col!r} (modality {name!r}) is {typ}, expected list<int16>")
        if len(spec.shape) != 1 or spec.shape[0] < 1:
            raise DataError(f"{manifest_path}: modality {name!r} waveform shape must be [max_samples], "
                            f"got {spec.shape}")
        return
    if not isinstance(typ, pa.FixedShapeTensorType):
        raise DataError(f"{path}: column {col!r} (modality {name!r}) is {typ}, expected a fixed_shape_tensor")
    if list(typ.shape) != list(spec.shape):
        raise DataError(f"{path}: column {col!r} (modality {name!r}) has shape {list(typ.shape)}, "
                        f"manifest says {spec.shape}")
    want = _arrow_dtype(spec.dtype, str(manifest_path))
    if typ.value_type != want:
        raise DataError(f"{path}: column {col!r} (modality {name!r}) has dtype {typ.value_type}, "
                        f"manifest says {spec.dtype}")
    perm = list(typ.permutation or range(len(typ.shape)))
    if perm != list(range(len(typ.shape))):
        raise DataError(f"{path}: column {col!r} has a non-identity permutation {perm} (write contiguous arrays)")


def _check_label_type(path: Path, manifest: Manifest, typ: pa.DataType) -> None:
    col = manifest.label_column
    if manifest.task == "multiclass":
        if not pa.types.is_integer(typ):
            raise DataError(f"{path}: column {col!r} is {typ}, expected an integer class id")
        return
    n = len(manifest.classes)
    if isinstance(typ, pa.FixedShapeTensorType):
        ok = list(typ.shape) == [n] and pa.types.is_integer(typ.value_type)
    elif pa.types.is_fixed_size_list(typ):
        ok = typ.list_size == n and pa.types.is_integer(typ.value_type)
    else:
        ok = False
    if not ok:
        raise DataError(f"{path}: column {col!r} is {typ}, expected {n} integer 0/1 labels "
                        f"(fixed_shape_tensor or fixed_size_list)")


def _check_schema(path: Path, schema: pa.Schema, manifest: Manifest, manifest_path: Path) -> None:
    names = set(schema.names)
    for col in (manifest.id_column, manifest.label_column):
        if col not in names:
            raise DataError(f"{path}: missing column {col!r}")
    _check_label_type(path, manifest, schema.field(manifest.label_column).type)
    for name, spec in manifest.modalities.items():
        if spec.column not in names:
            raise DataError(f"{path}: missing column {spec.column!r} for modality {name!r}")
        _check_modality_type(path, name, spec, schema.field(spec.column).type, manifest_path)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _scan_batch(path: Path, batch: pa.RecordBatch, offset: int, manifest: Manifest) -> None:
    """Data checks on one record batch; ``offset`` turns batch rows into file rows."""
    for spec in manifest.modalities.values():
        col = batch.column(spec.column)
        if col.null_count:
            row = offset + _first(col.is_null().to_numpy(zero_copy_only=False))
            raise DataError(f"{path}: column {spec.column!r} row {row}: missing value")
        if spec.kind == "waveform":
            lengths = np.diff(col.offsets.to_numpy())
            bad = lengths > int(spec.shape[0])
            if bad.any():
                i = _first(bad)
                raise DataError(f"{path}: column {spec.column!r} row {offset + i}: {int(lengths[i])} samples "
                                f"> max {spec.shape[0]} in the manifest")
            if (lengths == 0).any():
                raise DataError(f"{path}: column {spec.column!r} row {offset + _first(lengths == 0)}: empty waveform")
            continue
        arr = col.to_numpy_ndarray()
        if np.issubdtype(arr.dtype, np.floating):
            finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            if not finite.all():
                raise DataError(f"{path}: column {spec.column!r} row {offset + _first(~finite)}: NaN or inf values")
    lab = batch.column(manifest.label_column)
    if lab.null_count:
        row = offset + _first(lab.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{path}: column {manifest.label_column!r} row {row}: missing label")
    if manifest.task == "multiclass":
        y = lab.to_numpy(zero_copy_only=False).astype(np.int64)
        bad = (y < 0) | (y >= len(manifest.classes))
        if bad.any():
            i = _first(bad)
            raise DataError(f"{path}: column {manifest.label_column!r} row {offset + i}: label {int(y[i])} "
                            f"out of range 0..{len(manifest.classes) - 1}")
    else:
        if isinstance(lab, pa.ExtensionArray):
            y = lab.to_numpy_ndarray()
        else:
            y = lab.values.to_numpy(zero_copy_only=False).reshape(len(lab), -1)
        bad = ((y != 0) & (y != 1)).any(axis=1)
        if bad.any():
            i = _first(bad)
            raise DataError(f"{path}: column {manifest.label_column!r} row {offset + i}: label {y[i].tolist()} "
                            f"is not a 0/1 vector")
    ids = batch.column(manifest.id_column)
    if ids.null_count:
        row = offset + _first(ids.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{path}: column {manifest.id_column!r} row {row}: missing sample id")


def check_unique_ids(ids: list[tuple[Path, pa.Array]], column: str) -> None:
    """Sample ids must be unique across every split (a leak between splits is a bug)."""
    if not ids:
        return
    total = sum(len(a) for _, a in ids)
    if len(pc.unique(pa.chunked_array([a for _, a in ids]))) == total:
        return
    seen: dict[object, tuple[Path, int]] = {}
    for path, arr in ids:
        for row, value in enumerate(arr.to_pylist()):
            if value in seen:
                first_path, first_row = seen[value]
                raise DataError(f"{path}: column {column!r} row {row}: duplicate sample id {value!r} "
                                f"(first at {first_path.name} row {first_row})")
            seen[value] = (path, row)


def validate_dataset(root: str | Path, deep: bool = True, splits: list[str] | None = None) -> Manifest:
    """Check a prepared dataset against its manifest; returns the manifest or raises one-line ``DataError``."""
    root = Path(root).expanduser()
    manifest_path = root / MANIFEST
    manifest = load_manifest(root)
    if not manifest.splits:
        raise DataError(f"{manifest_path}: manifest lists no splits")
    for name, spec in manifest.modalities.items():
        if not spec.shape or any(int(s) < 1 for s in spec.shape):
            raise DataError(f"{manifest_path}: modality {name!r} has invalid shape {spec.shape}")
    wanted = splits or list(manifest.splits)
    all_ids: list[tuple[Path, pa.Array]] = []
    for split in wanted:
        if split not in manifest.splits:
            raise DataError(f"{manifest_path}: split {split!r} not in manifest (has {', '.join(manifest.splits)})")
        spec = manifest.splits[split]
        if not spec.files:
            raise DataError(f"{manifest_path}: split {split!r} lists no files")
        rows = 0
        for fname in spec.files:
            path = root / fname
            pf = _open(path)
            _check_schema(path, pf.schema_arrow, manifest, manifest_path)
            rows += pf.metadata.num_rows
            if deep:
                _scan_file(path, pf, manifest, all_ids)
        if rows == 0:
            raise DataError(f"{root / spec.files[0]}: split {split!r} is empty")
        if rows != spec.rows:
            raise DataError(f"{manifest_path}: split {split!r} has {rows} rows in its files, manifest says {spec.rows}")
    if deep:
        check_unique_ids(all_ids, manifest.id_column)
    return manifest


def _scan_file(path: Path, pf: pq.ParquetFile, manifest: Manifest, all_ids: list[tuple[Path, pa.Array]]) -> None:
    cols = list(dict.fromkeys([manifest.id_column, manifest.label_column,
                               *(s.column for s in manifest.modalities.values())]))
    offset = 0
    id_parts = []
    try:
        for batch in pf.iter_batches(batch_size=256, columns=cols):
            _scan_batch(path, batch, offset, manifest)
            id_parts.append(batch.column(manifest.id_column))
            offset += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: unreadable Parquet near row {offset} ({str(exc).splitlines()[0]})") from None
    if id_parts:
        all_ids.append((path, pa.concat_arrays(id_parts)))
