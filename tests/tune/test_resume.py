"""Interrupt the driver with a real signal mid-experiment, resume, and check nothing ran twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ARGS = ["variants=[unimodal:image,unimodal:audio,intra]", "budget.trials=2", "budget.max_epochs=3",
        "budget.grace_period=3", "final.seeds=[0]", "dataset.builtin.train_size=300",
        "dataset.builtin.val_size=60", "dataset.builtin.test_size=60", "--num-cpus", "2"]


def start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "i2m2_ray.tune", f"output_dir={out}", *ARGS], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"driver did not finish in {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def reported_epochs(trial_dir: Path) -> list[int]:
    """The epochs the trial trained, one per checkpoint it wrote.

    Tune may log a restored trial's last result again (same checkpoint, same metrics), and a trial
    interrupted after its last checkpoint re-reports its final metrics once without training (marked
    ``final_rereport``; RAY.md's killed-after-last-checkpoint case). Neither is a second training: a
    retrained epoch would have written a checkpoint of its own.
    """
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    rereports = [i for i, r in enumerate(rows) if r.get("final_rereport")]
    assert rereports in ([], [len(rows) - 1]), (trial_dir, rereports)
    by_checkpoint: dict[str, int] = {}
    for r in rows:
        if r.get("final_rereport"):
            continue
        name = r["checkpoint_dir_name"]
        assert by_checkpoint.setdefault(name, r["epoch"]) == r["epoch"], (trial_dir, name)
    return [by_checkpoint[name] for name in sorted(by_checkpoint)]


def test_sigint_then_resume_runs_each_trial_once(tmp_path):
    out = tmp_path / "exp"
    stage1 = out / "search-stage1"  # both stage-1 variants search side by side in one Tune run
    proc = start(out)
    deadline = time.monotonic() + 300
    # Interrupt stage 1 once one of its epochs has been reported.
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.stat().st_size for p in stage1.glob("*/result.json")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "experiment ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    code, stdout, stderr = finish(proc, 180)
    assert code == 130, (stdout, stderr)
    assert "re-run the same command to resume" in stderr
    state = json.loads((out / "state.json").read_text())["phases"]
    assert not state  # no search finished
    before = {p.parent.name: reported_epochs(p.parent) for p in stage1.glob("*/result.json") if p.stat().st_size}
    assert before

    code, stdout, stderr = finish(start(out), 400)
    assert code == 0, (stdout, stderr)
    assert f"resuming search-stage1 from {stage1}" in stdout
    state = json.loads((out / "state.json").read_text())["phases"]
    for phase, where, count in (("search-unimodal-image", stage1, 2), ("search-unimodal-audio", stage1, 2),
                                ("search-intra", out / "search-intra", 2)):
        trials = [out / t["trial_dir"] for t in state[phase]["trials"]]
        assert len(trials) == count and all(t.parent == where for t in trials), (phase, trials)
        for trial in trials:
            epochs = reported_epochs(trial)
            assert epochs == sorted(set(epochs)), (trial, epochs)  # no epoch trained or reported twice
            assert epochs[:len(before.get(trial.name, []))] == before.get(trial.name, [])
    assert len(list(stage1.glob("*/params.json"))) == 4  # no trial was started twice
    table = (out / "results.csv").read_text().splitlines()
    assert len(table) == 1 + 3 and all(",done" in row for row in table[1:])


def test_a_search_stopped_before_tune_first_saved_its_searcher_resumes(ray_local, tmp_path):
    """Tune writes ``tuner.pkl`` when a Tuner is built, without its param_space. A driver stopped between
    that and Tune's first searcher checkpoint left a run whose restore got an OptunaSearch with no space
    ("no search space has been defined"; seen once in CI, stopping the smoke experiment early in stage 2)."""
    from ray import tune

    from i2m2_ray.tune.experiment import load_experiment
    from i2m2_ray.tune.phases import run_phase
    from i2m2_ray.tune.service import build_tuner, trial_param_space
    from tests.tune.procs import SMOKE_EXPERIMENT

    exp = load_experiment(SMOKE_EXPERIMENT, [f"output_dir={tmp_path / 'exp'}", "variants=[unimodal:image]",
                                             "budget.trials=2", "budget.max_epochs=1"])
    name, variant = "search-unimodal-image", "unimodal:image"
    space = trial_param_space(exp, variant, {})
    build_tuner(exp, name, variant, space, search=True)  # all that the stopped driver left behind
    assert tune.Tuner.can_restore(str(tmp_path / "exp" / name))
    grid = run_phase(exp, name, variant, space, search=True, resume=True)
    assert len(grid) == 2 and grid.num_errors == 0 and grid.num_terminated == 2
