"""AV-MNIST: MultiBench-layout round trip, and the rebuild from the real MNIST + FSDD."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from i2m2_ray.data.avmnist import AVMNISTRawConfig, prepare_avmnist_raw
from i2m2_ray.data.memory import load_split
from i2m2_ray.data.sources import coloured_noise, power_spectrogram, read_idx
from i2m2_ray.data.validate import validate_dataset

from .conftest import REPO


def write_multibench(root, n_train=60, n_test=20, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    (root / "image").mkdir(parents=True)
    (root / "audio").mkdir()
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        arrays[part] = (rng.integers(0, 10, n), rng.uniform(-220, 365, (n, 784)).astype(dtype),
                        rng.random((n, 112, 112)).astype(dtype) * 1e-3)
        np.save(root / f"{part}_labels.npy", arrays[part][0])
        np.save(root / "image" / f"{part}_data.npy", arrays[part][1])
        np.save(root / "audio" / f"{part}_data.npy", arrays[part][2])
    return arrays


def test_multibench_roundtrip_cli(tmp_path):
    arrays = write_multibench(tmp_path / "mb")
    out = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-m", "i2m2_ray.data", "prepare", "avmnist", "--source",
                           str(tmp_path / "mb"), "--out", str(out), "--val-size", "10"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "prepare avmnist: 80/80" in proc.stderr  # progress line
    m = validate_dataset(out)
    assert {s: m.splits[s].rows for s in m.splits} == {"train": 50, "val": 10, "test": 20}
    y, img, aud = arrays["train"]
    for split, sl in (("train", slice(0, 50)), ("val", slice(50, 60))):
        d = load_split(out, split)
        np.testing.assert_array_equal(d.labels.numpy(), y[sl])
        np.testing.assert_array_equal(d.inputs["image"].numpy().reshape(-1, 784), img[sl].astype(np.float32))
        np.testing.assert_array_equal(d.inputs["audio"].numpy()[:, 0], aud[sl].astype(np.float32))
    d = load_split(out, "test")
    np.testing.assert_array_equal(d.inputs["audio"].numpy()[:, 0], arrays["test"][2].astype(np.float32))
    assert m.provenance["val_split"] == "last_rows"


def test_multibench_float16_and_28x28(tmp_path):
    root = tmp_path / "mb"
    arrays = write_multibench(root, n_train=30, n_test=5, dtype=np.float16)
    np.save(root / "image" / "train_data.npy", arrays["train"][1].reshape(30, 28, 28))
    from i2m2_ray.data.multibench import prepare_avmnist

    out = prepare_avmnist(root, tmp_path / "ds", val_size=5)
    d = load_split(out, "val")
    np.testing.assert_array_equal(d.inputs["image"].numpy()[:, 0], arrays["train"][1][25:].reshape(5, 28, 28)
                                  .astype(np.float32))


def test_power_spectrogram_matches_psd_definition():
    fs, n = 8000, 6000
    t = np.arange(n) / fs
    f0 = 1000.0
    x = np.sin(2 * np.pi * f0 * t)
    s = power_spectrogram(x)
    assert s.shape == (112, 112) and s.dtype == np.float32
    peak = int(np.argmax(s.mean(axis=1)))
    assert abs(peak * fs / 223 - f0) <= fs / 223
    # white noise: one-sided density 2*sigma^2/fs in the non-DC bins (boxcar, density scaling)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(200_000) * 0.1
    sw = power_spectrogram(w)
    assert abs(sw[1:].mean() / (2 * 0.01 / fs) - 1) < 0.05
    # noise is deterministic per seed and peak-normalised
    a = coloured_noise(np.random.default_rng([1, 2]), 5000, "pink")
    np.testing.assert_array_equal(a, coloured_noise(np.random.default_rng([1, 2]), 5000, "pink"))
    assert np.isclose(np.abs(a).max(), 1.0)


@pytest.fixture(scope="module")
def rebuilt(shared_data, tmp_path_factory):
    cfg = AVMNISTRawConfig(train_limit=1500, test_limit=300, val_size=300, pca_components=32, seed=7,
                           keep_waveform=True)
    out = tmp_path_factory.mktemp("avr") / "avmnist"
    return prepare_avmnist_raw(shared_data / "mnist", shared_data / "fsdd", out, cfg), cfg


def _table(ds, split, cols):
    return pq.read_table(ds / f"{split}.parquet", columns=cols)


@pytest.mark.slow
def test_rebuild_from_real_mnist_fsdd(rebuilt, shared_data):
    ds, cfg = rebuilt
    m = validate_dataset(ds)
    assert {s: m.splits[s].rows for s in m.splits} == {"train": 1200, "val": 300, "test": 300}
    assert m.provenance["pca"]["components"] == 32 and m.provenance["val_split"] == "speaker"
    assert "ESC-50" in m.provenance["noise"]["replaces"] and m.provenance["noise"]["kind"] == "pink coloured noise"
    val_speaker = m.provenance["val_speaker"]
    mnist_train = read_idx(next((shared_data / "mnist").glob("train-labels*")))
    mnist_test = read_idx(next((shared_data / "mnist").glob("t10k-labels*")))
    speakers = {}
    for split in ("train", "val", "test"):
        t = _table(ds, split, ["label", "fsdd_file", "speaker", "mnist_index", "num_samples"])
        labels = t.column("label").to_numpy()
        digits = np.array([int(re.match(r"(\d)_", f).group(1)) for f in t.column("fsdd_file").to_pylist()])
        np.testing.assert_array_equal(digits, labels)  # every clip's digit equals its image's label
        src = mnist_test if split == "test" else mnist_train
        np.testing.assert_array_equal(labels, src[t.column("mnist_index").to_numpy()])
        speakers[split] = set(t.column("speaker").to_pylist())
        d = load_split(ds, split)
        assert tuple(d.inputs["image"].shape) == (m.splits[split].rows, *m.modalities["image"].model_shape())
        assert tuple(d.inputs["audio"].shape) == (m.splits[split].rows, 1, 112, 112)
        assert d.inputs["waveform"].shape[1] == m.modalities["waveform"].shape[0]
        assert float(d.inputs["waveform"].abs().max()) <= 1.0
    assert speakers["test"] == {"yweweler"}
    assert "yweweler" not in speakers["train"] | speakers["val"]
    assert speakers["val"] == {val_speaker} and val_speaker not in speakers["train"]
    # validation images are the last val_size MNIST train rows
    assert _table(ds, "val", ["mnist_index"]).column("mnist_index").to_pylist() == list(range(1200, 1500))


@pytest.mark.slow
def test_rebuild_deterministic_and_reference_split(shared_data, tmp_path, rebuilt):
    ds, cfg = rebuilt
    from dataclasses import replace

    again = prepare_avmnist_raw(shared_data / "mnist", shared_data / "fsdd", tmp_path / "again", cfg)
    for split in ("train", "val", "test"):
        assert _table(ds, split, None).equals(_table(again, split, None)), split
    ref = prepare_avmnist_raw(shared_data / "mnist", shared_data / "fsdd", tmp_path / "ref",
                              replace(cfg, val_split="last_rows", keep_waveform=False, train_limit=600,
                                      test_limit=100, val_size=100))
    m = json.loads((ref / "manifest.json").read_text())
    assert m["provenance"]["val_split"] == "last_rows" and "leaky" in m["provenance"]["validation"]
    tr = set(_table(ref, "train", ["speaker"]).column("speaker").to_pylist())
    va = set(_table(ref, "val", ["speaker"]).column("speaker").to_pylist())
    assert va <= tr and "yweweler" not in tr | va
