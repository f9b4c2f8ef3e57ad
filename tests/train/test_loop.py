"""The training loop on the built-in dataset: checkpoints, resume, early stopping, outputs."""

from __future__ import annotations

import json

import pytest
import torch

from i2m2_ray.errors import CheckpointError
from i2m2_ray.train import load_train_config, train


def config(run_dir, dataset, **over):
    items = [f"run_dir={run_dir}", f"dataset.path={dataset}", "tensorboard=false", "optim.batch_size=40"]
    items += [f"{k}={v}" for k, v in over.items()]
    return load_train_config(None, items)


def test_stopped_and_resumed_run_matches_uninterrupted_run(tmp_path, small_dataset):
    full = train(config(tmp_path / "full", small_dataset, variant="i2m2:lf", epochs=4), console=False)
    train(config(tmp_path / "split", small_dataset, variant="i2m2:lf", epochs=2), console=False)
    resumed = train(config(tmp_path / "split", small_dataset, variant="i2m2:lf", epochs=4), console=False)
    assert resumed["epochs_run"] == 4
    for key in ("val/loss", "val/accuracy", "test/loss", "test/accuracy", "expert/inter/loss", "best_epoch"):
        assert resumed[key] == full[key], key
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_contents_and_checkpoint_retention(tmp_path, small_dataset):
    run = tmp_path / "run"
    result = train(config(run, small_dataset, variant="intra", epochs=4, keep_checkpoints=1), console=False)
    assert (run / "config.yaml").is_file() and (run / "model.pt").is_file()
    saved = json.loads((run / "final.json").read_text())
    assert saved["test/accuracy"] == result["test/accuracy"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "epoch_004" in kept and len(kept) <= 2
    state = torch.load(run / "checkpoints" / "epoch_004" / "state.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "best", "config"} <= set(state)
    assert state["config"]["variant"] == "intra"
    plain = torch.load(run / "model.pt", weights_only=True)
    assert set(plain) == set(state["model"])
    for key in ("expert/image/accuracy", "expert/audio/accuracy", "test/expert/image/accuracy"):
        assert key in result


def test_early_stopping_halts_after_patience(tmp_path, small_dataset):
    # lr far too small: the validation metric cannot improve, so patience runs out.
    result = train(config(tmp_path / "r", small_dataset, variant="unimodal:image", epochs=20, patience=2,
                          **{"optim.lr": 1e-9, "optim.momentum": 0.0}), console=False)
    assert result["epochs_run"] < 20
    assert result["epochs_run"] - result["best_epoch"] == 2


def test_resume_refuses_a_different_config(tmp_path, small_dataset):
    train(config(tmp_path / "r", small_dataset, variant="unimodal:image", epochs=1), console=False)
    with pytest.raises(CheckpointError, match="different 'variant'"):
        train(config(tmp_path / "r", small_dataset, variant="unimodal:audio", epochs=2), console=False)


def test_class_weighted_training_runs(tmp_path, dataset_factory):
    """Inverse-frequency class weights (C,) through the real loop, selecting by validation AUROC."""
    result = train(config(tmp_path / "r", dataset_factory(), variant="unimodal:audio", epochs=1,
                          class_weighted="true", metric="auroc"), console=False)
    assert 0.0 <= result["val/auroc"] <= 1.0
