"""Ray Data reader on a real local Ray cluster: same batches as the in-memory reader, in both modes."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
import torch

from i2m2_ray.data.format import load_manifest
from i2m2_ray.data.memory import iterate_batches, load_split
from i2m2_ray.data.ray_data import (
    SHUFFLE_BUFFER_BYTES,
    SHUFFLE_BUFFER_ROWS,
    RayBatches,
    choose_mode,
    estimate_bytes,
    iter_torch_batches,
    needed_columns,
    shuffle_buffer_rows,
)
from i2m2_ray.data.ray_source import plan_units
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
    """Order rows canonically (by their values) so shuffled and unshuffled epochs can be compared."""
    keys = [v.double().flatten(1) for v in inputs.values()]
    key = sum((x * torch.linspace(1, 2, x.shape[1], dtype=torch.float64)).sum(1) * 10.0 ** (3 * i)
              for i, x in enumerate(keys))
    order = torch.argsort(key)
    return {k: v[order] for k, v in inputs.items()}, labels[order]


def _assert_same_rows(got, ref):
    """Equal as multisets of rows: every value exact, whatever the order."""
    a, b = _sorted_rows(*got), _sorted_rows(ref.inputs, ref.labels)
    assert a[0].keys() == b[0].keys()
    for k in b[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    assert torch.equal(a[1], b[1])


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
        _assert_same_rows(got, ref)  # a permutation of the split
    parts = [_collect(reader.iter_batches(0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(parts[0][1]) == len(parts[1][1]) == 150
    keys = [{row.numpy().tobytes() for row in p[0]["image"]} for p in parts]  # (image sums collide here)
    assert len(keys[0]) == len(keys[1]) == 150 and not keys[0] & keys[1]

    # What Ray Train workers iterate: the materialized rows, permuted once when read (not in file order),
    # the same rows in the same order on every pass.
    def stored(ds):
        return torch.cat([torch.from_numpy(b["label"].to_numpy().astype("int64"))
                          for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")])

    first, again = stored(reader.dataset), stored(reader.dataset)
    assert torch.equal(first, again) and not torch.equal(first, ref.labels)
    assert torch.equal(stored(RayBatches(builtin_dataset, "train", 50, mode="materialize").dataset), ref.labels)


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


def test_plan_units_cover_every_row_group_once(builtin_dataset):
    manifest = validate_dataset(builtin_dataset)
    files = [str(builtin_dataset / f) for f in manifest.splits["train"].files]
    cols = needed_columns(manifest)
    groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
    small = plan_units(files, cols, block_bytes=1)  # below one group: one group per unit
    assert [u.row_groups for u in small] == [(g,) for g in range(groups)] and len(small) >= 2
    whole = plan_units(files, cols, block_bytes=2**40)
    assert len(whole) == len(files) and whole[0].row_groups == tuple(range(groups))
    for units in (small, whole):
        assert sum(u.rows for u in units) == manifest.splits["train"].rows
        assert sum(u.nbytes for u in units) == estimate_bytes(builtin_dataset, ["train"])


@pytest.mark.parametrize("name", ["builtin", "fastmri"])
def test_stream_epochs_hold_exactly_the_split(ray_local, builtin_dataset, fastmri_dataset, name):
    """A shuffled streamed epoch is a permutation of the rows the in-memory reader loads (exact values),
    fixed by (seed, epoch), different between epochs; unshuffled, it is the file order."""
    root = builtin_dataset if name == "builtin" else fastmri_dataset
    ref = load_split(root, "train")
    reader = RayBatches(root, "train", batch_size=16, mode="stream", shuffle=True, seed=2, block_bytes=1)
    assert len(reader.units) >= 2
    e0, e0_again, e1 = (_collect(reader.iter_batches(e)) for e in (0, 0, 1))
    for got in (e0, e1):
        _assert_same_rows(got, ref)
    assert torch.equal(e0[1], e0_again[1]) and all(torch.equal(e0[0][k], e0_again[0][k]) for k in ref.inputs)
    first = next(iter(ref.inputs))
    assert not torch.equal(e0[0][first], e1[0][first])
    plain = _collect(RayBatches(root, "train", batch_size=16, mode="stream", block_bytes=1).iter_batches(0))
    assert all(torch.equal(plain[0][k], ref.inputs[k]) for k in ref.inputs) and torch.equal(plain[1], ref.labels)


def test_stream_read_order_changes_every_execution(ray_local, builtin_dataset):
    """The Dataset handed to Ray Train is executed once per epoch: its read tasks come permuted anew, and
    so do the rows inside each block (large stream units would otherwise keep their stored order)."""
    reader = RayBatches(builtin_dataset, "train", batch_size=16, mode="stream", shuffle=True, seed=0, block_bytes=1)

    def blocks(it):
        return [tuple(b["label"].to_numpy().astype("int64"))
                for b in it.iter_batches(batch_size=None, batch_format="pyarrow")]

    it = reader.dataset.iterator()
    epochs = [blocks(it) for _ in range(3)]
    contents = [[tuple(sorted(b)) for b in e] for e in epochs]
    assert sorted(contents[0]) == sorted(contents[1]) == sorted(contents[2]) and len(epochs[0]) == len(reader.units)
    assert len({tuple(c) for c in contents}) > 1
    same_block = {c: b for c, b in zip(contents[0], epochs[0], strict=True)}
    assert any(same_block[c] != b for c, b in zip(contents[1], epochs[1], strict=True))


def test_plan_units_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match=r"train\.parquet: unreadable Parquet"):
        plan_units([str(bad)], ["image"])


def test_stream_cache_serves_later_epochs_from_mapped_blocks(ray_local, fastmri_dataset, tmp_path):
    """Epoch 0 decodes Parquet and leaves one Arrow IPC file per read unit; epoch 1 gives exactly the
    same rows from them (the Parquet files are then made unreadable to prove it); a torn entry is decoded
    again, and a rewritten Parquet file gets new entries, never the stale ones."""
    import shutil

    from i2m2_ray.data.ray_source import cache_entry

    root = tmp_path / "knee"
    shutil.copytree(fastmri_dataset, root)
    ref = load_split(root, "train")
    cache = tmp_path / "cache"
    reader = RayBatches(root, "train", batch_size=8, mode="stream", shuffle=True, seed=1, block_bytes=1,
                        cache_dir=cache)
    _assert_same_rows(_collect(reader.iter_batches(0)), ref)
    entries = {cache_entry(u, reader.columns, cache) for u in reader.units}
    assert len(entries) == len(reader.units) >= 2 and set(cache.glob("*.arrow")) == entries
    files = [root / f for f in reader.manifest.splits["train"].files]
    saved = {f: f.read_bytes() for f in files}
    stats = {f: f.stat() for f in files}
    for f in files:  # same size and mtime, so the same entries: now only the cache can serve the rows
        f.write_bytes(b"\0" * len(saved[f]))
        os.utime(f, ns=(stats[f].st_atime_ns, stats[f].st_mtime_ns))
    _assert_same_rows(_collect(reader.iter_batches(1)), ref)
    for f in files:
        f.write_bytes(saved[f])
        os.utime(f, ns=(stats[f].st_atime_ns, stats[f].st_mtime_ns))
    torn = sorted(entries)[0]
    torn.write_bytes(torn.read_bytes()[:100])
    _assert_same_rows(_collect(reader.iter_batches(2)), ref)
    assert torn.stat().st_size > 100  # decoded again and rewritten
    os.utime(files[0], ns=(stats[files[0]].st_atime_ns, stats[files[0]].st_mtime_ns + 10**9))
    fresh = {cache_entry(u, reader.columns, cache) for u in reader.units}
    assert fresh != entries and not (fresh - entries) & set(cache.glob("*.arrow"))
    uncached = RayBatches(root, "train", batch_size=8, mode="stream", shuffle=True, seed=1, block_bytes=1)
    _assert_same_rows(_collect(uncached.iter_batches(0)), ref)
    assert uncached.cache_dir is None


def test_shuffle_buffer_holds_about_one_block_of_large_rows(builtin_dataset, fastmri_dataset):
    """1,024 fastMRI slices would hold 0.8 GB per worker: the buffer is capped by bytes, never below 4 batches."""
    small, large = load_manifest(builtin_dataset), load_manifest(fastmri_dataset)
    assert shuffle_buffer_rows(small, 16) == SHUFFLE_BUFFER_ROWS
    slice_bytes = 2 * 320 * 320 * 4  # magnitude + phase, float32
    assert shuffle_buffer_rows(large, 16) == SHUFFLE_BUFFER_BYTES // slice_bytes < SHUFFLE_BUFFER_ROWS
    assert shuffle_buffer_rows(large, 64) == 256
    assert shuffle_buffer_rows(large, 16, ["magnitude"]) == SHUFFLE_BUFFER_BYTES // (slice_bytes // 2)
