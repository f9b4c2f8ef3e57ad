"""AV-MNIST in the MultiBench npy layout (what most users have) converted to Parquet.

Any float dtype, memory-mapped and converted in chunks: the float64 audio alone is about 6 GB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from i2m2_ray.data.avmnist import avmnist_modalities
from i2m2_ray.data.format import Manifest, tensor_array
from i2m2_ray.data.sources import CHUNK, RunningStats
from i2m2_ray.data.writer import DatasetWriter, Progress, check_output
from i2m2_ray.errors import DataError


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing modality file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable npy ({str(exc).splitlines()[0]})") from None


def _checked_chunk(path: Path, arr: np.ndarray, s: int, e: int, shape: tuple[int, ...]) -> np.ndarray:
    chunk = np.asarray(arr[s:e])
    if not (np.issubdtype(chunk.dtype, np.floating) or np.issubdtype(chunk.dtype, np.integer)):
        raise DataError(f"{path}: array dtype {chunk.dtype} is not numeric")
    chunk = chunk.astype(np.float32).reshape(len(chunk), *shape)
    finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: column 'data' row {s + int(np.flatnonzero(~finite)[0])}: NaN or inf values")
    return chunk


def _labels(path: Path, arr: np.ndarray) -> np.ndarray:
    y = np.asarray(arr)
    if y.ndim != 1:
        raise DataError(f"{path}: labels must be 1-D, got shape {list(y.shape)}")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise DataError(f"{path}: column 'label' row {int(np.flatnonzero(bad)[0])}: non-integer label {y[bad][0]}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y > 9)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column 'label' row {i}: label {int(y[i])} out of range 0..9")
    return y


def prepare_avmnist(source: str | Path, out_dir: str | Path, *, val_size: int = 5000, overwrite: bool = False,
                    progress: bool = False) -> Path:
    """Convert the MultiBench npy layout (any float dtype, memory-mapped, chunked) to Parquet."""
    check_output(out_dir, overwrite)
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DataError(f"{source}: source directory not found")
    arrays = {}
    for part in ("train", "test"):
        lab_path = source / f"{part}_labels.npy"
        img_path, aud_path = source / "image" / f"{part}_data.npy", source / "audio" / f"{part}_data.npy"
        y = _labels(lab_path, _load_npy(lab_path))
        img, aud = _load_npy(img_path), _load_npy(aud_path)
        n = len(y)
        if img.shape[0] != n or int(np.prod(img.shape[1:])) != 784:
            raise DataError(f"{img_path}: shape {list(img.shape)}, expected ({n}, 784) or ({n}, 28, 28) "
                            f"to match {lab_path.name}")
        if tuple(aud.shape) != (n, 112, 112):
            raise DataError(f"{aud_path}: shape {list(aud.shape)}, expected ({n}, 112, 112) to match {lab_path.name}")
        arrays[part] = (y, img, aud, img_path, aud_path)
    n_train = len(arrays["train"][0])
    if not 1 <= val_size < n_train:
        raise DataError(f"--val-size {val_size} must be in 1..{n_train - 1} (train has {n_train} rows)")
    cut = n_train - val_size
    plan = {"train": ("train", 0, cut), "val": ("train", cut, n_train), "test": ("test", 0, len(arrays["test"][0]))}
    manifest = Manifest(
        name="avmnist",
        task="multiclass",
        classes=[str(i) for i in range(10)],
        modalities=avmnist_modalities(False, 1),
        splits={},
        provenance={
            "source": f"MultiBench npy layout ({source})",
            "val_split": "last_rows",
            "val_size": val_size,
            "validation": "reference: last val_size train rows (shares recordings with train; leaky)",
            "dtypes": {k: str(v[1].dtype) + "/" + str(v[2].dtype) for k, v in arrays.items()},
            "pca": {"components": "unknown (as distributed)"},
        },
    )
    bar = Progress("prepare avmnist", n_train + len(arrays["test"][0]), enabled=progress)
    img_stats, aud_stats = RunningStats(), RunningStats()
    with DatasetWriter(out_dir, manifest, overwrite=overwrite) as writer:
        for split, (part, lo, hi) in plan.items():
            y, img, aud, img_path, aud_path = arrays[part]
            for s in range(lo, hi, CHUNK):
                e = min(s + CHUNK, hi)
                imgs = _checked_chunk(img_path, img, s, e, (28, 28))
                auds = _checked_chunk(aud_path, aud, s, e, (112, 112))
                if split == "train":
                    img_stats.add(imgs)
                    aud_stats.add(auds)
                writer.write(split, pa.table({
                    "sample_id": pa.array([f"{part}-{i:06d}" for i in range(s, e)]),
                    "image": tensor_array(imgs),
                    "audio": tensor_array(auds),
                    "label": pa.array(y[s:e].astype(np.int8)),
                }))
                bar.update(e - s)
        manifest.modalities["image"].extra.update(img_stats.as_dict())
        manifest.modalities["audio"].extra.update(aud_stats.as_dict())
        out = writer.commit()
    bar.close()
    return out
