"""Ray Train workers fed by Ray Data shards: materialized once in the driver, or streamed."""

from __future__ import annotations

import pytest

from i2m2_ray.errors import ConfigError
from i2m2_ray.train import load_train_config
from i2m2_ray.train.distributed import run_training


def config(tmp_path, dataset, mode: str, **over):
    items = [f"run_dir={tmp_path / mode}", f"dataset.path={dataset}", "variant=unimodal:image", "epochs=2",
             "workers=2", "cpus_per_worker=0.5", f"data_mode={mode}", "tensorboard=false"]
    return load_train_config(None, items + [f"{k}={v}" for k, v in over.items()])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["materialize", "stream"])
def test_two_workers_train_from_ray_data_shards(ray_local, tmp_path, small_dataset, capsys, mode):
    result = run_training(config(tmp_path, small_dataset, mode))
    assert f"training data: Ray Data, {mode}" in capsys.readouterr().out
    assert result["epochs_run"] == 2
    assert 0.0 <= result["test/accuracy"] <= 1.0 and result["train_seconds"] > 0
    assert (tmp_path / mode / "checkpoints" / "epoch_002" / "state.pt").is_file()


def test_ray_data_modes_need_the_ray_train_path(small_dataset, tmp_path):
    with pytest.raises(ConfigError, match="data_mode=stream feeds Ray Train workers"):
        load_train_config(None, [f"dataset.path={small_dataset}", "data_mode=stream"])
    with pytest.raises(ConfigError, match="data_mode: must be memory, auto, materialize or stream"):
        load_train_config(None, ["data_mode=disk"])


@pytest.mark.slow
def test_stream_shards_of_each_epoch_hold_the_split_exactly(ray_local, small_dataset):
    """What the Train workers get: ``streaming_split`` shards of the streamed Dataset, read by
    ``RayShardData``. Per epoch the two ranks' rows together are the split's rows, exactly; the
    order changes between epochs."""
    import threading

    import torch

    from i2m2_ray.data.memory import load_split
    from i2m2_ray.data.ray_data import RayBatches
    from i2m2_ray.data.ray_shard import RayShardData

    ref = load_split(small_dataset, "train")
    reader = RayBatches(small_dataset, "train", 16, mode="stream", shuffle=True, seed=0, block_bytes=1)
    assert reader.preshuffled  # what build_trainer hands the workers: the read tasks permute, no local buffer
    mods = list(reader.manifest.modalities)
    shards = reader.dataset.streaming_split(2, equal=True)
    got: dict[tuple[int, int], tuple[dict, torch.Tensor]] = {}

    def consume(rank: int) -> None:
        data = RayShardData(small_dataset, reader.manifest, mods, shards[rank], reader.preshuffled)
        for epoch in (0, 1):
            xs, ys = zip(*data.train_batches(16, 0, epoch, rank, 2))
            got[rank, epoch] = ({m: torch.cat([x[m] for x in xs]) for m in mods}, torch.cat(ys))

    threads = [threading.Thread(target=consume, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(got) == 4

    def canonical(inputs, labels):
        key = sum(inputs[m].double().flatten(1).sum(1) * 10.0 ** (6 * i) for i, m in enumerate(mods))
        order = torch.argsort(key)
        return [inputs[m][order] for m in mods], labels[order]

    want = canonical(ref.inputs, ref.labels)
    for epoch in (0, 1):
        both = ({m: torch.cat([got[r, epoch][0][m] for r in (0, 1)]) for m in mods},
                torch.cat([got[r, epoch][1] for r in (0, 1)]))
        rows = canonical(*both)
        assert all(torch.equal(a, b) for a, b in zip(rows[0], want[0])) and torch.equal(rows[1], want[1])
    assert not torch.equal(got[0, 0][0][mods[0]], got[0, 1][0][mods[0]])
