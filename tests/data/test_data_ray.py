"""Ray Data reader on a real local Ray cluster: same batches as the in-memory reader, in both modes."""

from __future__ import annotations

import pytest
import torch

from i2m2_ray.data.memory import iterate_batches, load_split
from i2m2_ray.data.ray_data import (
    RayBatches,
    choose_mode,
    estimate_bytes,
    iter_torch_batches,
)
from i2m2_ray.data.validate import validate_dataset
from i2m2_ray.errors import DataError

pytestmark = pytest.mark.slow  # ray.init and the first Ray Data execution take ~10 s here


def _collect(batches):
    inputs, labels = {}, []
    for x, y in batches:
        for k, v in x.items():
            inputs.setdefault(k, []).append(v)
        labels.append(y)
    return {k: torch.cat(v) for k, v in inputs.items()}, torch.cat(labels)


def _sorted_rows(inputs, labels):
    """Order rows canonically so shuffled and unshuffled epochs can be compared."""
    key = inputs["image"].flatten(1).sum(1) * 1e6 + inputs["audio"].flatten(1).abs().sum(1)
    order = torch.argsort(key)
    return {k: v[order] for k, v in inputs.items()}, labels[order]


def test_choose_mode_rule(builtin_dataset, monkeypatch):
    assert estimate_bytes(builtin_dataset, ["train"]) > 300 * 28 * 28  # at least the uint8 images
    assert choose_mode(builtin_dataset) == "materialize"  # a few MB always fits
    assert choose_mode(builtin_dataset, memory_fraction=1e-12) == "stream"
    assert choose_mode(builtin_dataset, override="stream") == "stream"
    monkeypatch.setenv("I2M2_DATA_MODE", "stream")
    assert choose_mode(builtin_dataset) == "stream"
    monkeypatch.setenv("I2M2_DATA_MODE", "bogus")
    with pytest.raises(DataError, match="auto, materialize or stream"):
        choose_mode(builtin_dataset)


@pytest.mark.parametrize("mode", ["materialize", "stream"])
def test_ray_batches_match_in_memory_reader(ray_local, builtin_dataset, mode):
    ref = load_split(builtin_dataset, "val")
    reader = RayBatches(builtin_dataset, "val", batch_size=32, mode=mode)
    assert reader.mode == mode
    batches = list(reader.iter_batches(0))
    x0, y0 = batches[0]
    rx, ry = next(iterate_batches(ref, 32, shuffle=False))
    assert x0.keys() == rx.keys()
    for k in rx:
        assert x0[k].dtype == torch.float32 and x0[k].shape == rx[k].shape
    assert y0.dtype == torch.int64
    inputs, labels = _collect(batches)
    torch.testing.assert_close(inputs["image"], ref.inputs["image"])
    torch.testing.assert_close(inputs["audio"], ref.inputs["audio"])  # padded with zeros, same as memory.py
    assert torch.equal(labels, ref.labels)


def test_shuffle_and_shards(ray_local, builtin_dataset):
    ref = load_split(builtin_dataset, "train")
    reader = RayBatches(builtin_dataset, "train", batch_size=50, mode="materialize", shuffle=True, seed=3)
    e0 = _collect(reader.iter_batches(0))
    e0_again = _collect(reader.iter_batches(0))
    e1 = _collect(reader.iter_batches(1))
    assert torch.equal(e0[1], e0_again[1])  # the order depends only on (seed, epoch)
    assert not torch.equal(e0[1], ref.labels) or not torch.equal(e0[0]["image"], ref.inputs["image"])
    for got in (e0, e1):
        a, b = _sorted_rows(*got), _sorted_rows(ref.inputs, ref.labels)
        torch.testing.assert_close(a[0]["image"], b[0]["image"])  # a permutation of the split
        assert torch.equal(a[1], b[1])
    parts = [_collect(reader.iter_batches(0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(parts[0][1]) == len(parts[1][1]) == 150
    keys = [set(p[0]["image"].flatten(1).sum(1).tolist()) for p in parts]
    assert not keys[0] & keys[1]


def test_train_shard_iterator(ray_local, builtin_dataset):
    manifest = validate_dataset(builtin_dataset)
    reader = RayBatches(builtin_dataset, "test", batch_size=40, mode="materialize")
    it = reader.dataset.iterator()  # what ray.train.get_dataset_shard returns: a DataIterator
    x, y = next(iter_torch_batches(it, manifest, 40, shuffle=True, seed=0))
    assert tuple(x["audio"].shape) == (40, *manifest.modalities["audio"].model_shape())
    assert torch.isfinite(x["audio"]).all()
    assert x["image"].shape == (40, 1, 28, 28) and y.shape == (40,)


def test_fastmri_multilabel_batches(ray_local, fastmri_dataset):
    reader = RayBatches(fastmri_dataset, "train", batch_size=8)
    x, y = next(reader.iter_batches(0))
    assert x["magnitude"].shape == (8, 1, 320, 320) and x["phase"].shape == (8, 1, 320, 320)
    assert y.shape == (8, 4) and y.dtype == torch.int64


def test_stream_refused_when_workers_hold_every_cpu(ray_local, builtin_dataset):
    with pytest.raises(DataError, match="CPU free of Train workers"):
        choose_mode(builtin_dataset, override="stream", reserved_cpus=2)
    assert choose_mode(builtin_dataset, reserved_cpus=2) == "materialize"
