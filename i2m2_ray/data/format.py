"""The on-disk dataset format: Parquet splits plus a ``manifest.json``.

Every modality is one column. Fixed-shape modalities use the canonical
``arrow.fixed_shape_tensor`` extension type (Ray Data and pyarrow both read it
as shaped arrays); raw audio is ``list<int16>`` plus ``sample_rate`` and
``num_samples``. The manifest is the contract every reader checks against.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from i2m2_ray.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
ModalityKind = Literal["image", "spectrogram", "waveform", "features"]
KINDS = ("image", "spectrogram", "waveform", "features")


@dataclass
class ModalitySpec:
    """One input modality: how it is stored and what shape the model sees."""

    kind: str
    column: str
    shape: list[int] = field(default_factory=list)  # stored shape; waveform: [max_samples]
    dtype: str = "float32"
    sample_rate: int | None = None  # waveform only
    extra: dict[str, Any] = field(default_factory=dict)  # normalisation, front-end hints

    def model_shape(self) -> tuple[int, ...]:
        """Shape of one sample as the encoder receives it (channel axis added for 2-D grids)."""
        if self.kind in ("image", "spectrogram") and len(self.shape) == 2:
            return (1, *self.shape)
        return tuple(self.shape)


@dataclass
class SplitSpec:
    rows: int
    files: list[str]


@dataclass
class Manifest:
    """Everything a reader or model builder needs to know about a prepared dataset."""

    name: str
    task: str  # "multiclass" | "multilabel"
    classes: list[str]  # multiclass: class names; multilabel: one name per binary label
    modalities: dict[str, ModalitySpec]
    splits: dict[str, SplitSpec]
    label_column: str = "label"
    id_column: str = "sample_id"
    provenance: dict[str, Any] = field(default_factory=dict)
    bayes_accuracy: float | None = None
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        """Classes per head: K for multiclass, 2 for every multi-label head."""
        return len(self.classes) if self.task == "multiclass" else 2

    @property
    def num_heads(self) -> int | None:
        return None if self.task == "multiclass" else len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST) -> Manifest:
        try:
            mods = {
                name: ModalitySpec(**spec) for name, spec in data["modalities"].items()
            }
            splits = {name: SplitSpec(**spec) for name, spec in data["splits"].items()}
            rest = {k: v for k, v in data.items() if k not in ("modalities", "splits")}
            manifest = cls(modalities=mods, splits=splits, **rest)
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where}: malformed manifest ({exc})") from None
        if manifest.task not in ("multiclass", "multilabel"):
            raise DataError(f"{where}: task must be multiclass or multilabel, got {manifest.task!r}")
        for name, spec in manifest.modalities.items():
            if spec.kind not in KINDS:
                raise DataError(f"{where}: modality {name!r} has unknown kind {spec.kind!r}")
        if len(manifest.modalities) < 1 or not manifest.classes:
            raise DataError(f"{where}: manifest needs at least one modality and one class")
        return manifest


def load_manifest(root: str | Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest (is {root} a prepared dataset directory?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    return Manifest.from_dict(data, str(path))


def tensor_array(x: np.ndarray) -> pa.ExtensionArray:
    """Fixed-shape tensor column; contiguous first, since polars ignores permutations."""
    import pyarrow as pa  # lazy: models and the in-process loop import this module without pyarrow

    x = np.ascontiguousarray(x)
    if x.shape[0] == 0:  # pyarrow refuses empty ndarrays; build the empty column from its storage type
        typ = pa.fixed_shape_tensor(pa.from_numpy_dtype(x.dtype), list(x.shape[1:]))
        return pa.ExtensionArray.from_storage(typ, pa.array([], type=typ.storage_type))
    return pa.FixedShapeTensorArray.from_numpy_ndarray(x)


def waveform_array(clips: list[np.ndarray]) -> pa.Array:
    """Ragged int16 audio column; padding happens at read/collate time."""
    import pyarrow as pa

    return pa.array([np.asarray(c, dtype=np.int16) for c in clips], type=pa.list_(pa.int16()))


def write_dataset(
    out_dir: str | Path,
    manifest: Manifest,
    tables: dict[str, pa.Table],
    row_group_size: int = 256,
    overwrite: bool = False,
) -> Path:
    """Write splits + manifest into a sibling temp dir, then rename: no half-written datasets."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir}: output directory already exists (pass overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for split, table in tables.items():
            fname = f"{split}.parquet"
            meta = dict(table.schema.metadata or {})
            meta[b"i2m2_ray.dataset"] = manifest.name.encode()
            pq.write_table(table.replace_schema_metadata(meta), tmp / fname, row_group_size=row_group_size)
            manifest.splits[split] = SplitSpec(rows=table.num_rows, files=[fname])
        (tmp / MANIFEST).write_text(manifest.to_json())
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_table(root: str | Path, manifest: Manifest, split: str, columns: list[str] | None = None) -> pa.Table:
    """Read one split's Parquet files; a corrupt file fails naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split not in manifest.splits:
        raise DataError(f"{Path(root) / MANIFEST}: split {split!r} not in manifest (has {', '.join(manifest.splits)})")
    parts = []
    for fname in manifest.splits[split].files:
        path = Path(root) / fname
        if not path.is_file():
            raise DataError(f"{path}: file listed in the manifest is missing")
        try:
            parts.append(pq.read_table(path, columns=columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def column_to_numpy(table: pa.Table, spec: ModalitySpec, where: str) -> np.ndarray:
    """Decode one modality column into a float32 array shaped (N, *model_shape)."""
    import pyarrow as pa

    col = table.column(spec.column).combine_chunks()
    if spec.kind == "waveform":
        max_len = int(spec.shape[0])
        lengths = np.diff(col.offsets.to_numpy())
        if lengths.size and lengths.max() > max_len:
            row = int(np.argmax(lengths > max_len))
            raise DataError(f"{where}: column {spec.column!r} row {row}: {lengths[row]} samples > max {max_len}")
        flat = col.values.to_numpy(zero_copy_only=False).astype(np.float32) / 32768.0
        out = np.zeros((len(col), max_len), dtype=np.float32)
        starts = col.offsets.to_numpy()[:-1]
        for i, (s, n) in enumerate(zip(starts, lengths)):
            out[i, :n] = flat[s : s + n]
        return out
    if not isinstance(col.type, pa.FixedShapeTensorType):
        raise DataError(f"{where}: column {spec.column!r} is {col.type}, expected a fixed_shape_tensor")
    arr = col.to_numpy_ndarray()
    if list(arr.shape[1:]) != list(spec.shape):
        raise DataError(
            f"{where}: column {spec.column!r} has shape {list(arr.shape[1:])}, manifest says {spec.shape}"
        )
    arr = arr.astype(np.float32)
    scale = spec.extra.get("scale")
    if scale is not None:
        arr = arr * np.float32(scale)
    return arr.reshape(len(arr), *spec.model_shape())
