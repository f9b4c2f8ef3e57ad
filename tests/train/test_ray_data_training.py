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
