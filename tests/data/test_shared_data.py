"""One copy of the data per node (data/shared.py) and column pruning (data/arrays.py), on a real local Ray
cluster and real Parquet files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from i2m2_ray.data.format import load_manifest, tensor_array
from i2m2_ray.data.memory import InMemoryData, load_split
from i2m2_ray.errors import DataError


def _reader(root: str) -> dict:
    """What a trial on this node sees: its lease, the refs it read, and the file its arrays are mapped from."""
    from i2m2_ray.data.format import load_manifest
    from i2m2_ray.data.memory import InMemoryData

    manifest = load_manifest(root)
    data = InMemoryData(root, manifest, list(manifest.modalities))
    x = data.splits["train"].inputs["image"]
    addr = x.data_ptr()
    mapped = []
    for line in open("/proc/self/maps"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= addr < hi:
            mapped = line.split()[3:]  # device, inode, path
    return {"name": data.lease.name, "refs": {k: r.hex() for k, r in data.lease.refs.items()}, "mapped": mapped,
            "writable": data.lease.arrays["train"].inputs["image"].flags.writeable,
            "values": {s: {k: v.numpy().copy() for k, v in t.inputs.items()} | {"y": t.labels.numpy().copy()}
                       for s, t in data.splits.items()}}


def test_two_concurrent_trials_map_one_copy_read_once(ray_local, small_dataset):
    from i2m2_ray.data.shared import holder_stats

    task = ray_local.remote(num_cpus=1)(_reader)
    first, second = ray_local.get([task.remote(str(small_dataset)), task.remote(str(small_dataset))])
    assert first["name"] == second["name"]
    assert first["refs"] == second["refs"]  # the same objects ...
    assert first["mapped"] == second["mapped"] and "plasma" in first["mapped"][-2]  # ... in the same shared memory
    assert holder_stats(first["name"])["reads"] == 1  # Parquet read once for both
    assert not first["writable"]
    for split in ("train", "val", "test"):
        own = load_split(small_dataset, split)
        for name, want in own.inputs.items():
            np.testing.assert_array_equal(first["values"][split][name], want.numpy())
        np.testing.assert_array_equal(first["values"][split]["y"], own.labels.numpy())


def _train(overrides: list[str]) -> dict:
    from i2m2_ray.train import load_train_config
    from i2m2_ray.train.loop import train

    return train(load_train_config(None, overrides), console=False)


def test_training_on_read_only_shared_arrays_matches_a_private_copy(ray_local, small_dataset, tmp_path):
    common = [f"dataset.path={small_dataset}", "epochs=2", "tensorboard=false", "threads=1",
              "variant=i2m2:lf"]
    shared = ray_local.get(ray_local.remote(num_cpus=1)(_train).remote([*common, f"run_dir={tmp_path / 's'}"]))
    private = _train([*common, f"run_dir={tmp_path / 'p'}"])
    for key in ("val/accuracy", "test/accuracy", "val/loss", "test/loss"):
        assert shared[key] == pytest.approx(private[key], rel=1e-5, abs=1e-6), key


@pytest.fixture(scope="module")
def kspace_dataset(small_dataset, tmp_path_factory):
    """A --keep-kspace-like dataset: the built-in one plus a big 'kspace' modality whose column chunks are
    overwritten with garbage, so any read of that column fails while the others read fine."""
    root = tmp_path_factory.mktemp("kspace") / "data"
    shutil.copytree(small_dataset, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["modalities"]["kspace"] = {"kind": "image", "column": "kspace", "shape": [2, 64, 64],
                                        "dtype": "float32"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    for split in manifest["splits"]:
        path = root / f"{split}.parquet"
        table = pq.read_table(path)
        k = np.random.default_rng(0).standard_normal((table.num_rows, 2, 64, 64), dtype=np.float32)
        pq.write_table(table.append_column("kspace", tensor_array(k)), path, compression="none")
        meta = pq.ParquetFile(path).metadata
        blob = bytearray(path.read_bytes())
        for rg in range(meta.num_row_groups):
            col = meta.row_group(rg).column(meta.num_columns - 1)
            start = col.dictionary_page_offset or col.data_page_offset
            blob[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
        path.write_bytes(bytes(blob))
    return root


def test_reader_reads_only_the_models_columns(kspace_dataset, small_dataset):
    manifest = load_manifest(kspace_dataset)
    with pytest.raises(OSError):  # the k-space column really is unreadable
        pq.read_table(kspace_dataset / "train.parquet", columns=["kspace"])
    data = InMemoryData(kspace_dataset, manifest, ["image", "audio"], share=False)
    assert set(data.splits["train"].inputs) == {"image", "audio"}
    own = load_split(small_dataset, "train")
    for name in ("image", "audio"):
        np.testing.assert_array_equal(data.splits["train"].inputs[name].numpy(), own.inputs[name].numpy())
    with pytest.raises(DataError, match="train.parquet: unreadable Parquet"):
        InMemoryData(kspace_dataset, manifest, ["image", "audio", "kspace"], share=False)
