"""A real smoke experiment through both stages: real Ray Tune trials, real Optuna, real files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from i2m2_ray.tune.experiment import load_experiment
from i2m2_ray.tune.runner import run_experiment
from i2m2_ray.tune.state import ExperimentState
from tests.tune.conftest import SMOKE_TWO_SEEDS
from tests.tune.procs import SMOKE_EXPERIMENT

pytestmark = pytest.mark.slow


@pytest.fixture
def smoke(smoke_two_seeds):
    return smoke_two_seeds


def test_table_has_every_variant_with_test_mean_and_spread(smoke):
    out, table = smoke
    assert table["variant"].to_list() == ["unimodal:image", "unimodal:audio", "inter:lf", "i2m2:lf"]
    assert table["status"].to_list() == ["done"] * 4
    assert table["seeds"].to_list() == [2] * 4
    assert table["trials"].to_list() == [2] * 4
    for col in ("val_accuracy", "test_accuracy_mean", "test_accuracy_std", "lr", "weight_decay"):
        assert table[col].is_not_null().all(), col
    assert ((table["test_accuracy_mean"] >= 0) & (table["test_accuracy_mean"] <= 1)).all()
    for name in ("results.md", "results.csv", "results.parquet"):
        assert (out / name).is_file()
    assert "i2m2:lf" in (out / "results.md").read_text()


def _expert_tensors(path: Path, expert: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    prefix = f"experts.{expert}."
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def test_stage2_trials_start_from_the_best_stage1_weights(smoke):
    """Stage-2 search trials from the best stage-1 search trials; final seed s from the seed-s stage-1 finals."""
    out, _ = smoke
    state = ExperimentState(out)
    variants = {"image": "unimodal:image", "audio": "unimodal:audio", "inter": "inter:lf"}
    best = {e: out / state.phase(f"search-{v.replace(':', '-')}")["model_path"] for e, v in variants.items()}
    stage1_finals = {(r["variant"], r["seed"]): out / r["trial_dir"] / "model.pt"
                     for r in state.phase("final")["runs"]}
    stage2 = state.phase("search-i2m2-lf")["trials"]
    finals = [r for r in state.phase("final-stage2")["runs"] if r["variant"] == "i2m2:lf"]
    assert len(stage2) == 2 and len(finals) == 2
    for trial in stage2 + finals:
        assert not Path(trial["trial_dir"]).is_absolute()  # the ledger's paths are relative to the experiment
        init = out / trial["trial_dir"] / "init.pt"
        assert init.is_file(), init
        sources = best if trial in stage2 else {e: stage1_finals[(v, trial["seed"])] for e, v in variants.items()}
        for expert, source in sources.items():
            want = _expert_tensors(Path(source), expert)
            got = _expert_tensors(init, expert)
            assert want and set(got) == set(want)
            assert all(torch.equal(got[k], want[k]) for k in want), (trial["trial_dir"], expert)
        # and training moved away from the initialisation
        trained = _expert_tensors(out / trial["trial_dir"] / "model.pt", "inter")
        assert any(not torch.equal(trained[k], v) for k, v in _expert_tensors(init, "inter").items()
                   if v.is_floating_point())


def test_every_trial_saved_its_resolved_config_and_curves(smoke):
    out, _ = smoke
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trial_dirs = [p.parent for p in out.glob("*/*/config.yaml")]
    assert len(trial_dirs) == 4 * 2 + 4 * 2  # searches + finals
    for trial in trial_dirs:
        events = EventAccumulator(str(trial / "tensorboard"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"train/loss", "val/loss", "val/accuracy", "val/accuracy_best", "lr"} <= tags, trial


def test_report_reprints_table_and_analyses(smoke):
    out, _ = smoke
    proc = subprocess.run([sys.executable, "-m", "i2m2_ray.report", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| i2m2:lf | 2 |" in proc.stdout
    assert "dependency diagnosis" in proc.stdout and "unimodal:audio" in proc.stdout
    assert "missing modality" in proc.stdout and "inter" in proc.stdout
    assert "I2M2 minus each baseline" in proc.stdout
    assert re.search(r"\| i2m2:lf +\| inter:lf +\| 2 +\| 60 +\|", proc.stdout), proc.stdout


def test_rerun_on_a_finished_experiment_runs_nothing(smoke, capsys):
    out, table = smoke
    before = json.loads((out / "state.json").read_text())
    again = run_experiment(load_experiment(SMOKE_EXPERIMENT, [f"output_dir={out}", *SMOKE_TWO_SEEDS]))
    assert "already finished" in capsys.readouterr().out
    assert json.loads((out / "state.json").read_text()) == before
    assert again.drop("wall_s").equals(table.drop("wall_s"))  # another module re-recorded a phase's wall time


def test_relative_dataset_path_means_the_callers_directory(ray_local, small_dataset, tmp_path, monkeypatch):
    """Tune runs trials in their own directories: a relative dataset.path must still find the data."""
    monkeypatch.chdir(small_dataset.parent)
    exp = load_experiment(SMOKE_EXPERIMENT, [f"output_dir={tmp_path / 'exp'}", f"dataset.path={small_dataset.name}",
                                             "variants=[unimodal:image]", "budget.trials=1"])
    assert exp.dataset.path == str(small_dataset.resolve())
    table = run_experiment(exp)
    assert table["status"].to_list() == ["done"]
