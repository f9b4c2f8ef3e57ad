"""A trial that needs more than one worker drives a real TorchTrainer (DDP) and reports to Tune."""

from __future__ import annotations

import json

import pytest

from i2m2_ray.tune.experiment import load_experiment
from i2m2_ray.tune.runner import run_experiment
from i2m2_ray.tune.state import ExperimentState

pytestmark = pytest.mark.slow


def test_two_worker_trials_run_under_ray_train(ray_local, tmp_path):
    out = tmp_path / "exp"
    exp = load_experiment(None, [
        f"output_dir={out}", "variants=[unimodal:image]", "budget.trials=1", "budget.max_epochs=2",
        "budget.grace_period=1", "final.seeds=[0]", "resources.workers=2", "resources.cpus_per_trial=0.5",
        "dataset.builtin.train_size=200", "dataset.builtin.val_size=60", "dataset.builtin.test_size=60"])
    table = run_experiment(exp)
    assert table["status"].to_list() == ["done"]
    state = ExperimentState(out)
    for run in state.phase("search-unimodal-image")["trials"] + state.phase("final")["runs"]:
        assert run["epochs"] == 2, run
        config = json.loads(json.dumps(run))  # plain data in the ledger
        assert config["trial_dir"]
    final = state.phase("final")["runs"][0]
    assert final["final"]["epochs_run"] == 2 and 0.0 <= final["final"]["test/accuracy"] <= 1.0
    trial_dir = out / "final" / final["trial_dir"].split("/")[-1]
    saved = (trial_dir / "config.yaml").read_text()
    assert "workers: 2" in saved
    assert sorted(p.name for p in (trial_dir / "checkpoints").glob("epoch_*")) == ["epoch_001", "epoch_002"]
