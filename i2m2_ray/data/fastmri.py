"""fastMRI knee volumes + fastMRI+ slice annotations -> one row per slice.

Images follow the I2M2 recipe: k-space zero-filled symmetrically to width 400, centred orthonormal
inverse 2-D FFT (ifftshift -> ifft2 -> fftshift), centre crop 320x320, magnitude = abs and
phase = angle. Multi-coil volumes are combined per slice: magnitude by root-sum-of-squares over
coils, phase as the angle of the plain coil sum (a simple virtual-coil phase; recorded in the manifest).

Labels, per slice, [other, meniscus_tear, acl, cartilage] from fastMRI+ knee.csv: "ACL" in the
finding -> acl, "Meniscus Tear" -> meniscus_tear, "cartilage" (any case) -> cartilage, anything else
(effusion, bone, cysts, MCL/PCL/LCL, "Displaced Meniscal Tissue", "artifact") -> other. A slice of
a reviewed volume (knee_file_list.csv) without rows is all zeros; volumes not in the list are
unlabeled and skipped. Study-level rows (study_level=Yes, slice 0, no box) label the slice they
name by default ("slice"), or every slice of the volume ("volume").

The split is by volume (never by slice), 70/15/15, ordered by SHA-256 of "seed:volume_id", so it
does not depend on Python's string hash seed or on the order files are found in.
"""

from __future__ import annotations

import csv
import hashlib
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa

from i2m2_ray.config import check_fields
from i2m2_ray.data.format import Manifest, ModalitySpec, tensor_array
from i2m2_ray.data.sources import RunningStats
from i2m2_ray.data.writer import DatasetWriter, Progress, check_output
from i2m2_ray.errors import ConfigError, DataError

CLASSES = ["other", "meniscus_tear", "acl", "cartilage"]
ISMRMRD_NS = "{http://www.ismrm.org/ISMRMRD}"
KSPACE_WIDTH = 400
CROP = 320


def finding_to_index(finding: str) -> int:
    """Which of the four labels one fastMRI+ finding string sets."""
    if "ACL" in finding:
        return 2
    if "Meniscus Tear" in finding:
        return 1
    if "cartilage" in finding.lower():
        return 3
    return 0


def label_vector(findings: list[str]) -> np.ndarray:
    """int8 [other, meniscus_tear, acl, cartilage] for a slice's findings (all zeros if none)."""
    out = np.zeros(len(CLASSES), dtype=np.int8)
    for f in findings:
        out[finding_to_index(f)] = 1
    return out


@dataclass
class Annotations:
    """fastMRI+ annotations: reviewed volumes, per-slice and study-level findings."""

    reviewed: set[str]
    slices: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    study: dict[str, list[str]] = field(default_factory=dict)

    def findings(self, volume: str, slice_no: int, scope: str) -> list[str]:
        out = list(self.slices.get((volume, slice_no), []))
        if scope == "volume":
            out += self.study.get(volume, [])
        return sorted(set(out))


def read_annotations(knee_csv: str | Path, file_list: str | Path) -> Annotations:
    """Parse knee.csv (file,slice,study_level,x,y,width,height,label) and the reviewed-volume list."""
    knee_csv, file_list = Path(knee_csv).expanduser(), Path(file_list).expanduser()
    for p in (knee_csv, file_list):
        if not p.is_file():
            raise DataError(f"{p}: annotation file not found")
    reviewed = {line.strip() for line in file_list.read_text().splitlines() if line.strip()}
    slices: dict[tuple[str, int], set[str]] = defaultdict(set)
    study: dict[str, set[str]] = defaultdict(set)
    with knee_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"file", "slice", "study_level", "label"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DataError(f"{knee_csv}: header must contain {sorted(need)}, got {reader.fieldnames}")
        for row_no, row in enumerate(reader):
            label = (row["label"] or "").strip()
            if not label:
                raise DataError(f"{knee_csv}: column 'label' row {row_no}: empty finding")
            try:
                slice_no = int(row["slice"])
            except (TypeError, ValueError):
                raise DataError(f"{knee_csv}: column 'slice' row {row_no}: not an integer ({row['slice']!r})") from None
            vol = row["file"].strip()
            slices[(vol, slice_no)].add(label)
            if (row["study_level"] or "").strip().lower() == "yes":
                study[vol].add(label)
    return Annotations(reviewed, {k: sorted(v) for k, v in slices.items()}, {k: sorted(v) for k, v in study.items()})


def volume_split(volume_ids: list[str], seed: int = 0,
                 fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> dict[str, str]:
    """Deterministic volume -> split map: sort by SHA-256("seed:id"), cut 70/15/15 (>=1 each when n>=3)."""
    order = sorted(set(volume_ids), key=lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest())
    n = len(order)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = n - n_val - n_test
    out = {}
    for i, v in enumerate(order):
        out[v] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return out


def _pad_or_crop_width(k: np.ndarray, width: int) -> np.ndarray:
    w = k.shape[-1]
    if w == width:
        return k
    if w > width:
        left = (w - width) // 2
        return k[..., left : left + width]
    left = (width - w) // 2
    pad = [(0, 0)] * (k.ndim - 1) + [(left, width - w - left)]
    return np.pad(k, pad)


def kspace_to_images(kspace: np.ndarray, multicoil: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zero-filled k-space, magnitude, phase) for a stack of slices; images are (S, 320, 320) float32."""
    k = _pad_or_crop_width(np.asarray(kspace).astype(np.complex64), KSPACE_WIDTH)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    h, w = img.shape[-2:]
    top, left = (h - CROP) // 2, (w - CROP) // 2
    img = img[..., top : top + CROP, left : left + CROP]
    if multicoil:
        mag = np.sqrt((np.abs(img) ** 2).sum(axis=1))
        phase = np.angle(img.sum(axis=1))
    else:
        mag, phase = np.abs(img), np.angle(img)
    return k, mag.astype(np.float32), phase.astype(np.float32)


@dataclass
class Volume:
    path: Path
    volume_id: str


def find_volumes(source: str | Path) -> list[Volume]:
    """Every ``*.h5`` under ``source`` (sorted); a volume id seen twice is an error."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DataError(f"{source}: source directory not found")
    seen: dict[str, Path] = {}
    out = []
    for p in sorted(source.rglob("*.h5")):
        if p.stem in seen:
            raise DataError(f"{p}: duplicate volume id {p.stem!r} (also {seen[p.stem]})")
        seen[p.stem] = p
        out.append(Volume(p, p.stem))
    if not out:
        raise DataError(f"{source}: no fastMRI .h5 volumes found")
    return out


def _iter_volume(path: Path, chunk: int = 16) -> Iterator[tuple[int, np.ndarray, int, str]]:
    """Yield (first slice, k-space chunk, coils (0 = single-coil), acquisition), reading ``chunk``
    slices at a time so a 1 GB multi-coil volume never sits in memory whole."""
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise DataError(f"{path}: missing dataset 'kspace'")
            ds = f["kspace"]
            if ds.ndim not in (3, 4) or not np.issubdtype(ds.dtype, np.complexfloating):
                raise DataError(f"{path}: dataset 'kspace' is {ds.dtype} {list(ds.shape)}, expected complex "
                                f"(slices, [coils,] rows, cols)")
            if "ismrmrd_header" in f:
                raw = f["ismrmrd_header"][()]
                try:
                    ET.fromstring(raw.decode() if isinstance(raw, bytes) else str(raw))
                except ET.ParseError as exc:
                    raise DataError(f"{path}: dataset 'ismrmrd_header' is not valid XML ({exc})") from None
            acq = f.attrs.get("acquisition", "")
            acq = acq.decode() if isinstance(acq, bytes) else str(acq)
            coils = int(ds.shape[1]) if ds.ndim == 4 else 0
            for s0 in range(0, ds.shape[0], chunk):
                k = ds[s0 : s0 + chunk]
                bad = ~np.isfinite(k.reshape(len(k), -1)).all(axis=1)
                if bad.any():
                    first = s0 + int(np.flatnonzero(bad)[0])
                    raise DataError(f"{path}: dataset 'kspace' slice {first}: NaN or inf values")
                yield s0, k, coils, acq
    except OSError as exc:
        raise DataError(f"{path}: unreadable HDF5 ({str(exc).splitlines()[0]})") from None


@dataclass
class FastMRIConfig:
    seed: int = field(default=0, metadata={"ge": 0, "lt": 2**32, "flag": "--seed"})
    study_level: str = "slice"  # "slice" | "volume"
    keep_kspace: bool = False
    limit_volumes: int | None = field(default=None, metadata={"ge": 1, "flag": "--limit-volumes"})

    def check(self) -> None:
        try:
            check_fields(self)
        except ConfigError as exc:
            raise DataError(str(exc)) from None
        if self.study_level not in ("slice", "volume"):
            raise DataError(f"--study-level must be slice or volume, got {self.study_level!r}")


def prepare_fastmri(source: str | Path, annotations: str | Path, file_list: str | Path, out_dir: str | Path,
                    cfg: FastMRIConfig | None = None, *, overwrite: bool = False, progress: bool = False) -> Path:
    """Convert fastMRI knee HDF5 volumes under ``source`` to the Parquet format, one row per slice."""
    cfg = cfg or FastMRIConfig()
    check_output(out_dir, overwrite)
    cfg.check()
    ann = read_annotations(annotations, file_list)
    volumes = find_volumes(source)
    labeled = [v for v in volumes if v.volume_id in ann.reviewed]
    unlabeled = [v.volume_id for v in volumes if v.volume_id not in ann.reviewed]
    if cfg.limit_volumes:
        labeled = labeled[: cfg.limit_volumes]
    if len(labeled) < 3:
        raise DataError(f"{source}: {len(labeled)} volume(s) listed in {Path(file_list).name}; "
                        f"need at least 3 for a train/val/test split by volume")
    split_of = volume_split([v.volume_id for v in labeled], cfg.seed)
    mods = {
        "magnitude": ModalitySpec(kind="image", column="magnitude", shape=[CROP, CROP], dtype="float32"),
        "phase": ModalitySpec(kind="image", column="phase", shape=[CROP, CROP], dtype="float32",
                              extra={"range": [-float(np.pi), float(np.pi)]}),
    }
    if cfg.keep_kspace:
        mods["kspace"] = ModalitySpec(kind="image", column="kspace", shape=[2, 640, KSPACE_WIDTH], dtype="float32",
                                      extra={"planes": ["real", "imag"], "zero_filled_width": KSPACE_WIDTH})
    manifest = Manifest(
        name="fastmri_knee",
        task="multilabel",
        classes=list(CLASSES),
        modalities=mods,
        splits={},
        provenance={
            "source": f"fastMRI knee HDF5 ({source}) + fastMRI+ {Path(annotations).name}",
            "seed": cfg.seed,
            "split": "by volume, 70/15/15, sha256(seed:volume_id) order",
            "volumes": {s: sorted(v for v, sp in split_of.items() if sp == s) for s in ("train", "val", "test")},
            "unlabeled_volumes_skipped": sorted(unlabeled),
            "label_rules": {"acl": "'ACL' in finding", "meniscus_tear": "'Meniscus Tear' in finding",
                            "cartilage": "'cartilage' in finding (any case)", "other": "any other finding",
                            "unannotated_slice_of_reviewed_volume": "all zeros"},
            "study_level_scope": cfg.study_level,
            "image_recipe": "zero-fill width 400, ifftshift/ifft2(ortho)/fftshift, crop 320x320, abs and angle",
            "multicoil": "magnitude = root-sum-of-squares over coils; phase = angle of the coil sum",
        },
    )
    last_annotated: dict[str, int] = defaultdict(lambda: -1)
    for v, s in ann.slices:
        last_annotated[v] = max(last_annotated[v], s)
    bar = Progress("prepare fastmri", len(labeled), enabled=progress)
    mag_stats = RunningStats()
    out_of_range = 0
    with DatasetWriter(out_dir, manifest, overwrite=overwrite, row_group_size=64) as writer:
        for vol in labeled:
            split = split_of[vol.volume_id]
            n = 0
            for s0, kchunk, coils, acq in _iter_volume(vol.path):
                if cfg.keep_kspace and coils:
                    raise DataError(f"{vol.path}: --keep-kspace stores single-coil k-space only; "
                                    f"this volume has {coils} coils")
                k, mag, phase = kspace_to_images(kchunk, multicoil=bool(coils))
                m = len(mag)
                n = s0 + m
                findings = [ann.findings(vol.volume_id, s0 + i, cfg.study_level) for i in range(m)]
                labels = np.stack([label_vector(f) for f in findings])
                if split == "train":
                    mag_stats.add(mag)
                cols = {
                    "sample_id": pa.array([f"{vol.volume_id}-{s0 + i:03d}" for i in range(m)]),
                    "volume_id": pa.array([vol.volume_id] * m),
                    "slice": pa.array(np.arange(s0, s0 + m, dtype=np.int16)),
                    "magnitude": tensor_array(mag),
                    "phase": tensor_array(phase),
                }
                if cfg.keep_kspace:
                    cols["kspace"] = tensor_array(np.stack([k.real, k.imag], axis=1).astype(np.float32))
                cols["label"] = tensor_array(labels)
                cols["findings"] = pa.array(findings, type=pa.list_(pa.string()))
                cols["acquisition"] = pa.array([acq] * m)
                cols["coils"] = pa.array(np.full(m, max(coils, 1), dtype=np.int16))
                writer.write(split, pa.table(cols))
            out_of_range += int(last_annotated[vol.volume_id] >= n)
            bar.update(1)
        manifest.modalities["magnitude"].extra.update(mag_stats.as_dict())
        manifest.provenance["volumes_with_annotations_beyond_last_slice"] = out_of_range
        out = writer.commit()
    bar.close()
    return out
