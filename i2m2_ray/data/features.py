"""Precomputed embeddings per modality (e.g. image and text vectors from a frozen vision-language
backbone) plus labels, converted into the project format so the same models and readers apply.

Source: one Parquet file with a vector column per modality (list<float>, fixed_size_list or
fixed_shape_tensor; every row the same length), a label column (integer class id for multiclass;
a 0/1 vector for multilabel), optionally an id column and a split column (train/val/test).
Without a split column, rows are split 70/15/15 by SHA-256 of "seed:id" (hash-seed independent).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from i2m2_ray.data.format import SPLITS, Manifest, ModalitySpec, tensor_array
from i2m2_ray.data.writer import DatasetWriter, check_output
from i2m2_ray.errors import DataError


def _vectors(path: Path, table: pa.Table, column: str) -> np.ndarray:
    """(N, D) float32 from a list-like or tensor column; ragged or non-finite rows fail naming the row."""
    if column not in table.column_names:
        raise DataError(f"{path}: missing column {column!r}")
    col = table.column(column).combine_chunks()
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column {column!r} row {row}: missing vector")
    if isinstance(col.type, pa.FixedShapeTensorType):
        arr = col.to_numpy_ndarray().reshape(len(col), -1)
    elif pa.types.is_fixed_size_list(col.type):
        arr = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.diff(col.offsets.to_numpy())
        bad = lengths != lengths[0]
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: column {column!r} row {row}: length {int(lengths[row])}, "
                            f"row 0 has {int(lengths[0])}")
        arr = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), int(lengths[0]))
    else:
        raise DataError(f"{path}: column {column!r} is {col.type}, expected a vector (list or tensor)")
    arr = arr.astype(np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: column {column!r} row {int(np.flatnonzero(~finite)[0])}: NaN or inf values")
    return np.ascontiguousarray(arr)


def prepare_features(source: str | Path, out_dir: str | Path, modalities: dict[str, str], *,
                     label_column: str = "label", id_column: str | None = None, split_column: str | None = None,
                     task: str = "multiclass", classes: list[str] | None = None, seed: int = 0,
                     name: str = "features", overwrite: bool = False) -> Path:
    """Convert a Parquet file of embedding vectors into the dataset format (modalities of kind ``features``)."""
    check_output(out_dir, overwrite)
    source = Path(source).expanduser()
    if not source.is_file():
        raise DataError(f"{source}: source file not found")
    if task not in ("multiclass", "multilabel"):
        raise DataError(f"--task must be multiclass or multilabel, got {task!r}")
    if not modalities:
        raise DataError("give at least one --modality NAME=COLUMN")
    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{source}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
    n = table.num_rows
    vecs = {m: _vectors(source, table, c) for m, c in modalities.items()}
    if label_column not in table.column_names:
        raise DataError(f"{source}: missing column {label_column!r}")
    lab = table.column(label_column).combine_chunks()
    if lab.null_count:
        row = int(np.flatnonzero(lab.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{source}: column {label_column!r} row {row}: missing label")
    if task == "multiclass":
        y = lab.to_numpy(zero_copy_only=False)
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: column {label_column!r} is {lab.type}, expected integer class ids")
        classes = classes or [str(i) for i in range(int(y.max()) + 1 if n else 1)]
        bad = (y < 0) | (y >= len(classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: column {label_column!r} row {i}: label {int(y[i])} "
                            f"out of range 0..{len(classes) - 1}")
        label_arr = pa.array(y.astype(np.int64))
    else:
        y = _vectors(source, table, label_column)
        classes = classes or [f"label_{i}" for i in range(y.shape[1])]
        if y.shape[1] != len(classes):
            raise DataError(f"{source}: column {label_column!r} has {y.shape[1]} labels, "
                            f"--classes lists {len(classes)}")
        bad = ((y != 0) & (y != 1)).any(axis=1)
        if bad.any():
            raise DataError(f"{source}: column {label_column!r} row {int(np.flatnonzero(bad)[0])}: not a 0/1 vector")
        label_arr = tensor_array(y.astype(np.int8))
    if id_column:
        if id_column not in table.column_names:
            raise DataError(f"{source}: missing column {id_column!r}")
        ids = [str(v) for v in table.column(id_column).to_pylist()]
    else:
        ids = [f"row-{i:08d}" for i in range(n)]
    if split_column:
        if split_column not in table.column_names:
            raise DataError(f"{source}: missing column {split_column!r}")
        split = np.array([str(s) for s in table.column(split_column).to_pylist()], dtype=object)
        bad = ~np.isin(split, SPLITS)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: column {split_column!r} row {i}: split {split[i]!r} not one of {SPLITS}")
    else:
        h = np.array([int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:8], 16) / 16**8 for i in ids])
        split = np.where(h < 0.7, "train", np.where(h < 0.85, "val", "test")).astype(object)
    manifest = Manifest(
        name=name, task=task, classes=list(classes),
        modalities={m: ModalitySpec(kind="features", column=m, shape=[int(v.shape[1])], dtype="float32")
                    for m, v in vecs.items()},
        splits={},
        provenance={"source": str(source), "columns": dict(modalities), "label_column": label_column,
                    "split": f"column {split_column!r}" if split_column else f"sha256(seed:id) 70/15/15, seed {seed}"},
    )
    with DatasetWriter(out_dir, manifest, overwrite=overwrite) as writer:
        for s in SPLITS:
            idx = np.flatnonzero(split == s)
            if idx.size == 0:
                raise DataError(f"{source}: split {s!r} would be empty")
            cols = {"sample_id": pa.array([ids[i] for i in idx])}
            cols.update({m: tensor_array(v[idx]) for m, v in vecs.items()})
            cols["label"] = label_arr.take(pa.array(idx))
            writer.write(s, pa.table(cols))
        return writer.commit()
