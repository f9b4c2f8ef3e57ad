"""The on-disk dataset format: Parquet splits plus a ``manifest.json``.

Every modality is one column. Fixed-shape modalities use the canonical
``arrow.fixed_shape_tensor`` extension type (Ray Data and pyarrow both read it
as shaped arrays); raw audio is ``list<int16>`` plus ``sample_rate`` and
``num_samples``. The manifest is the contract every reader checks against.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from i2m2_ray.config import from_dict
from i2m2_ray.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
ModalityKind = Literal["image", "spectrogram", "waveform", "features"]
KINDS = ("image", "spectrogram", "waveform", "features")


# Hints in ``ModalitySpec.extra`` that readers and the model builder use, with the types they need.
EXTRA_NUMBERS = ("scale", "mean", "std")
EXTRA_POSITIVE_INTS = ("n_fft", "hop_length", "frames")


@dataclass
class ModalitySpec:
    """One input modality: how it is stored and what shape the model sees."""

    kind: ModalityKind
    column: str
    # stored shape; waveform: [max_samples]
    shape: list[int] = field(default_factory=list, metadata={"ge": 1, "le": 2**31 - 1})
    dtype: str = "float32"
    sample_rate: int | None = field(default=None, metadata={"ge": 1})  # waveform only
    extra: dict[str, Any] = field(default_factory=dict)  # normalisation, front-end hints

    def model_shape(self) -> tuple[int, ...]:
        """Shape of one sample as the encoder receives it (channel axis added for 2-D grids)."""
        if self.kind in ("image", "spectrogram") and len(self.shape) == 2:
            return (1, *self.shape)
        return tuple(self.shape)

    def validate(self, where: str = "") -> None:
        dims = {"image": (2, 3), "spectrogram": (2, 3), "waveform": (1,)}.get(self.kind)
        if not self.shape or (dims is not None and len(self.shape) not in dims):
            want = ("a non-empty list" if dims is None
                    else " or ".join(map(str, dims)) + (" dimension" if dims == (1,) else " dimensions"))
            raise ConfigError(f"{where}.shape: a {self.kind} needs {want}, got {self.shape}")
        for key in EXTRA_NUMBERS:
            value = self.extra.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{where}.extra.{key}: expected a number, got {value!r}")
        for key in EXTRA_POSITIVE_INTS:
            value = self.extra.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}.extra.{key}: expected a positive integer, got {value!r}")


@dataclass
class SplitSpec:
    rows: int = field(metadata={"ge": 0})
    files: list[str]

    def validate(self, where: str = "") -> None:
        if not self.files:
            raise ConfigError(f"{where}.files: no files listed")
        for i, name in enumerate(self.files):
            if not inside(name):
                raise ConfigError(f"{where}.files[{i}]: {name!r} must be a relative path inside the dataset "
                                  "directory")


def inside(name: str) -> bool:
    """Whether a manifest's file entry stays inside the dataset directory (no absolute path, no ``..``)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return (bool(name) and not PurePosixPath(name).is_absolute() and not PureWindowsPath(name).anchor
            and ".." not in parts and "\0" not in name)


@dataclass
class Manifest:
    """Everything a reader or model builder needs to know about a prepared dataset."""

    name: str
    task: Literal["multiclass", "multilabel"]
    classes: list[str]  # multiclass: class names; multilabel: one name per binary label
    modalities: dict[str, ModalitySpec]
    splits: dict[str, SplitSpec]
    label_column: str = "label"
    id_column: str = "sample_id"
    provenance: dict[str, Any] = field(default_factory=dict)
    bayes_accuracy: float | None = field(default=None, metadata={"ge": 0, "le": 1})
    format_version: int = field(default=FORMAT_VERSION, metadata={"ge": 1, "le": FORMAT_VERSION})

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
        """Every field type-checked, unknown keys refused; errors name ``where`` and the dotted key."""
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
        try:
            return from_dict(cls, data)
        except ConfigError as exc:
            raise DataError(f"{where}: {str(exc).replace('unknown config key', 'unknown key')}") from None

    def validate(self, where: str = "") -> None:
        if not self.modalities:
            raise ConfigError("modalities: need at least one modality")
        least = 2 if self.task == "multiclass" else 1
        if len(self.classes) < least:
            raise ConfigError(f"classes: a {self.task} task needs at least {least}, got {len(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError("classes: names must be distinct")
        columns = [spec.column for spec in self.modalities.values()] + [self.label_column, self.id_column]
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise ConfigError(f"modalities: column {twice[0]!r} is used twice (modalities, label and id "
                              "need one column each)")


def load_manifest(root: str | Path) -> Manifest:
    path = Path(root).expanduser() / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest (is {root} a prepared dataset directory?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: unreadable manifest ({type(exc).__name__})") from None
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


def read_table(root: str | Path, manifest: Manifest, split: str, columns: list[str] | None = None) -> pa.Table:
    """Read one split's Parquet files; a corrupt file fails naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split not in manifest.splits:
        raise DataError(f"{Path(root) / MANIFEST}: split {split!r} not in manifest (has {', '.join(manifest.splits)})")
    parts = []
    for fname in manifest.splits[split].files:
        if not inside(fname):
            raise DataError(f"{Path(root) / MANIFEST}: splits.{split}.files: {fname!r} is outside the dataset")
        path = Path(root) / fname
        if not path.is_file():
            raise DataError(f"{path}: file listed in the manifest is missing")
        try:
            parts.append(pq.read_table(path, columns=columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def column_to_numpy(table: pa.Table, spec: ModalitySpec, where: str, offset: int = 0) -> np.ndarray:
    """Decode one modality column into a float32 array shaped (N, *model_shape); ``offset``: the table's
    first row in its split, for the row numbers in errors."""
    import pyarrow as pa

    col = table.column(spec.column).combine_chunks()
    if spec.kind == "waveform":
        max_len = int(spec.shape[0])
        lengths = np.diff(col.offsets.to_numpy())
        if lengths.size and lengths.max() > max_len:
            row = int(np.argmax(lengths > max_len))
            raise DataError(f"{where}: column {spec.column!r} row {offset + row}: {lengths[row]} samples "
                            f"> max {max_len}")
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
        arr *= np.float32(scale)
    return arr.reshape(len(arr), *spec.model_shape())
