"""``search.storage``: the variants' Optuna studies in a journal file (or an RDB) that outlives the driver,
checked before Ray starts, and continued by a later experiment of the same name (warm start)."""

from __future__ import annotations

import math
import subprocess
import sys

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from i2m2_ray.errors import ConfigError
from i2m2_ray.tune.experiment import DEFAULT_SPACE, load_experiment
from i2m2_ray.tune.runner import run_experiment
from i2m2_ray.tune.state import ExperimentState
from tests.tune.procs import REPO, SMOKE_EXPERIMENT, child_env

VARIANTS = ["unimodal:image", "unimodal:audio"]


def test_storage_values_are_checked_before_ray_starts(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^search.storage: /nonexistent-dir does not exist \(the journal"):
        load_experiment(SMOKE_EXPERIMENT, ["search.storage=/nonexistent-dir/studies.log"])
    with pytest.raises(ConfigError, match=r"^search.storage: nosuchdb://x/y: not an RDB URL this installation"):
        load_experiment(SMOKE_EXPERIMENT, ["search.storage=nosuchdb://x/y"])
    with pytest.raises(ConfigError, match=r"^search.storage: .* is a directory"):
        load_experiment(SMOKE_EXPERIMENT, [f"search.storage={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^search.storage: /nonexistent-dir does not exist \(the SQLite"):
        load_experiment(SMOKE_EXPERIMENT, ["search.storage=sqlite:////nonexistent-dir/studies.db"])
    url = f"sqlite:///{tmp_path}/studies.db"
    assert load_experiment(SMOKE_EXPERIMENT, [f"search.storage={url}"]).search_storage == url
    monkeypatch.chdir(tmp_path)
    exp = load_experiment(SMOKE_EXPERIMENT, ["search.storage=studies.log"])
    assert exp.search_storage == str(tmp_path / "studies.log")  # the caller's directory, made absolute
    assert exp.search == load_experiment(SMOKE_EXPERIMENT).search  # the space is untouched
    assert load_experiment(None, ["search.storage=studies.log"]).search == {
        "optim.lr": {"loguniform": [0.005, 0.15]}, "optim.weight_decay": {"loguniform": [1.0e-5, 1.0e-3]}}
    assert set(DEFAULT_SPACE) == set(exp.search)


def test_cli_refuses_a_bad_storage_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "i2m2_ray.tune", str(SMOKE_EXPERIMENT),
                           "search.storage=/nonexistent-dir/studies.log"], capture_output=True, text=True,
                          timeout=120, env=child_env(), cwd=REPO)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: search.storage: /nonexistent-dir does not exist (the journal file's directory)"]


def _study(journal, variant: str) -> optuna.Study:
    return optuna.load_study(study_name=f"smoke/{variant}", storage=JournalStorage(JournalFileBackend(str(journal))))


@pytest.mark.slow
def test_studies_outlive_the_driver_and_warm_start(ray_local, tmp_path):
    journal = tmp_path / "studies.log"
    common = [f"variants=[{','.join(VARIANTS)}]", "budget.trials=2", "final.seeds=[0]", f"search.storage={journal}"]
    run_experiment(load_experiment(SMOKE_EXPERIMENT, [f"output_dir={tmp_path / 'a'}", *common]))
    state = ExperimentState(tmp_path / "a")
    for variant in VARIANTS:
        rows = state.phase(f"search-{variant.replace(':', '-')}")["trials"]
        study = _study(journal, variant)
        assert study.direction == optuna.study.StudyDirection.MAXIMIZE
        trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(trials) == 2, study.trials
        got = sorted((round(t.params["optim.lr"], 12), t.value) for t in trials)
        want = sorted((round(r["params"]["optim.lr"], 12), r["val_best"]) for r in rows)
        assert all(g[0] == w[0] and math.isclose(g[1], w[1]) for g, w in zip(got, want)), (got, want)

    # A later experiment of the same name and storage continues each variant's study.
    run_experiment(load_experiment(SMOKE_EXPERIMENT, [f"output_dir={tmp_path / 'b'}", *common,
                                                      "variants=[unimodal:image]"]))
    image = _study(journal, "unimodal:image")
    assert len([t for t in image.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4
    later = {round(r["params"]["optim.lr"], 12)
             for r in ExperimentState(tmp_path / "b").phase("search-unimodal-image")["trials"]}
    assert later <= {round(t.params["optim.lr"], 12) for t in image.trials[2:]}
    assert len(_study(journal, "unimodal:audio").trials) == 2  # untouched
