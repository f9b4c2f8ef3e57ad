"""Fixtures for the data-layer tests: real shared data (skipped when absent), real fastMRI-layout
HDF5 volumes and small prepared datasets (the session Ray cluster, ``ray_local``, is in tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    env = os.environ.get("I2M2_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "mnist").is_dir() or not (root / "fsdd" / "recordings").is_dir():
        pytest.skip(f"real data not found at {root} (set I2M2_SHARED_DATA; CI has it, a fresh clone does not)")
    return root


@pytest.fixture(scope="session")
def knee_csvs() -> tuple[Path, Path]:
    root = shared_data_dir() / "fastmri_plus"
    if not (root / "knee.csv").is_file() or not (root / "knee_file_list.csv").is_file():
        pytest.skip(f"fastMRI+ annotations not found at {root} (set I2M2_SHARED_DATA; CI has them)")
    return root / "knee.csv", root / "knee_file_list.csv"


HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <encoding>
    <encodedSpace><matrixSize><x>640</x><y>{w}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>280</x><y>280</y><z>4.5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{lim}</maximum><center>{c}</center></kspace_encoding_step_1>
      <slice><minimum>0</minimum><maximum>0</maximum><center>0</center></slice>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>"""


def write_fastmri_volume(path: Path, slices: int, *, coils: int = 0, width: int = 368, seed: int = 0,
                         acquisition: str = "CORPD_FBK") -> np.ndarray:
    """One volume in the real fastMRI layout; returns the k-space written."""
    rng = np.random.default_rng(seed)
    shape = (slices, coils, 640, width) if coils else (slices, 640, width)
    k = (rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(shape, dtype=np.float32))
    k = (k * 1e-4).astype(np.complex64)
    sampled = np.zeros(width, bool)
    sampled[2 : width - 2] = True  # columns outside the header's encoding limits are zero, as in the real files
    k[..., ~sampled] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k)
        rss = np.abs(rng.standard_normal((slices, 320, 320))).astype(np.float32)
        f.create_dataset("reconstruction_rss", data=rss)
        if not coils:
            f.create_dataset("reconstruction_esc", data=rss)
        f.create_dataset("ismrmrd_header", data=np.bytes_(HEADER.format(w=width, lim=width - 1, c=width // 2)))
        f.attrs["acquisition"] = acquisition
        f.attrs["max"] = float(rss.max())
        f.attrs["norm"] = float(np.linalg.norm(rss))
        f.attrs["patient_id"] = f"patient-{seed:04d}"
    return k


# volume id -> (slices, coils): ids taken from the real knee.csv / knee_file_list.csv
FASTMRI_VOLUMES = {
    "file1000185": (19, 0),  # cartilage slices 5-7, ACL slices 16-18
    "file1000586": (17, 0),  # meniscus tear slices 15-16
    "file1000351": (8, 0),   # subchondral edema slices 3-7 -> other
    "file1001022": (3, 0),   # study-level artifact row (slice 0) -> other
    "file1000033": (3, 0),   # reviewed, no rows -> all zeros
    "file1001369": (9, 2),   # multi-coil; edema slices 7-8
    "file1000004": (2, 0),   # not in knee_file_list.csv -> unlabeled, skipped
}


@pytest.fixture(scope="session")
def fastmri_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fastmri_src")
    for i, (vol, (slices, coils)) in enumerate(FASTMRI_VOLUMES.items()):
        folder = "multicoil_train" if coils else "singlecoil_train"
        write_fastmri_volume(root / folder / f"{vol}.h5", slices, coils=coils, seed=i,
                             acquisition="CORPDFS_FBK" if i % 2 else "CORPD_FBK")
    return root


@pytest.fixture(scope="session")
def fastmri_dataset(fastmri_source: Path, knee_csvs: tuple[Path, Path],
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    from i2m2_ray.data.fastmri import prepare_fastmri

    out = tmp_path_factory.mktemp("fastmri_out") / "knee"
    return prepare_fastmri(fastmri_source, knee_csvs[0], knee_csvs[1], out)


@pytest.fixture(scope="session")
def builtin_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from i2m2_ray.data.synthetic import SyntheticConfig, generate

    out = tmp_path_factory.mktemp("builtin") / "ds"
    return generate(SyntheticConfig(train_size=300, val_size=100, test_size=100, seed=3), out)
