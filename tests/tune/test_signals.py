"""SIGTERM (what `ray job stop` and schedulers send) and Ctrl-C stop the CLIs gracefully: exit 130, one
line on stderr (no native stack dump, no Tune warnings), finished work kept, and a re-run resumes.

Real processes and real signals; each run is its own local Ray cluster, started by the CLI.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.tune.procs import REPO, child_env, tail

pytestmark = pytest.mark.slow
FIRST_REPORT_S = 400  # generous: the 2 CPUs may be shared by other work
RUN_S = 600
# Three epochs a trial, so the signal sent after a trial's first report lands while its phase runs
# (with the smoke experiment's one epoch both trials can end, and the phase with them, right then).
EPOCHS = ["budget.max_epochs=3", "budget.grace_period=3"]
# Stage 1 only (two variants side by side, then their finals): stopping and resuming a stage is what is
# tested here; stage 2 resumes the same way (tests/tune/test_storage_s3.py stops the experiment there).
VARIANTS = ["unimodal:image", "unimodal:audio"]
STOPPED = re.compile(r"interrupted: (\S+) was stopped before all its trials finished; re-run the same command "
                     r"to resume$")


def start_smoke(out: Path, logs: Path) -> subprocess.Popen:
    """`python -m i2m2_ray.tune --smoke` (3 epochs a trial, stage 1), output to files (a full pipe would block
    the driver)."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "w") as so, open(logs / "stderr", "w") as se:
        return subprocess.Popen([sys.executable, "-m", "i2m2_ray.tune", "--smoke", f"output_dir={out}", "--num-cpus",
                                 "2", *EPOCHS, f"variants=[{','.join(VARIANTS)}]"], stdout=so, stderr=se, cwd=REPO,
                                env=child_env(), start_new_session=True)


def wait(proc: subprocess.Popen, logs: Path, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"not finished in {timeout_s} s\n{tail(logs / 'stdout')}\n{tail(logs / 'stderr')}")


def signal_after_first_report(out: Path, logs: Path, sig: signal.Signals) -> int:
    """Start the smoke experiment, send sig once a trial has reported, return the exit code."""
    proc = start_smoke(out, logs)
    deadline = time.monotonic() + FIRST_REPORT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.stat().st_size for p in out.glob("*/*/result.json")):
            break
        time.sleep(0.3)
    assert proc.poll() is None, f"ended before it could be stopped\n{tail(logs / 'stderr')}"
    os.kill(proc.pid, sig)
    return wait(proc, logs, 300)


def stderr_lines(logs: Path) -> list[str]:
    return [ln for ln in (logs / "stderr").read_text(errors="replace").splitlines() if ln.strip()]


def checkpoint_files(out: Path) -> dict[Path, tuple[int, str]]:
    """Every file the trials checkpointed: (mtime_ns, sha256) by path."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in out.glob("*/trial_*/checkpoint_*/**/*") if p.is_file()}


def test_sigterm_stops_gracefully_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "exp"
    code = signal_after_first_report(out, tmp_path / "run1", signal.SIGTERM)
    lines = stderr_lines(tmp_path / "run1")
    assert code == 130, lines
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), lines  # no stack dump, no Tune warnings
    stopped = STOPPED.match(lines[0])
    assert stopped, lines[0]
    phase = stopped.group(1)
    assert list((out / phase).glob("experiment_state-*.json")), "Tune's experiment state was not saved"
    # Trials that finished before the stop (their "done" line printed) keep their checkpoints as they were.
    # A running trial resumes from the last checkpoint Tune had registered, so an epoch it was still
    # reporting may be trained again (Tune's semantics, as for Ctrl-C).
    finished = re.findall(r"trial (\w+) done", (tmp_path / "run1" / "stdout").read_text())
    kept = {p: v for p, v in checkpoint_files(out).items() if p.parts[-3].removeprefix("trial_") in finished}

    code = wait(start_smoke(out, tmp_path / "run2"), tmp_path / "run2", RUN_S)
    stdout = (tmp_path / "run2" / "stdout").read_text()
    assert code == 0, tail(tmp_path / "run2" / "stderr")
    assert f"resuming {phase} from" in stdout, stdout
    after = checkpoint_files(out)
    assert {p: after.get(p) for p in kept} == kept  # finished trials: kept, never retrained
    started = [p for search in out.glob("search-*") for p in search.glob("trial_*/params.json")]
    assert len(started) == 2 * len(VARIANTS), started  # 2 per variant (stages run side by side): none twice
    table = pl.read_csv(out / "results.csv")
    assert sorted(table["variant"].to_list()) == sorted(VARIANTS)
    assert table["status"].to_list() == ["done"] * len(VARIANTS)


def test_ctrl_c_is_one_line_and_keeps_the_experiment_state(tmp_path):
    out = tmp_path / "exp"
    code = signal_after_first_report(out, tmp_path / "run", signal.SIGINT)
    lines = stderr_lines(tmp_path / "run")
    assert code == 130, lines
    assert len(lines) == 1 and STOPPED.match(lines[0]), lines
    phase = STOPPED.match(lines[0]).group(1)
    assert list((out / phase).glob("experiment_state-*.json")), "Tune's experiment state was not saved"


def test_train_cli_sigterm_after_the_first_epoch(tmp_path, small_dataset):
    """`python -m i2m2_ray.train` (one run, no Ray) takes SIGTERM like Ctrl-C."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with open(logs / "stdout", "w") as so, open(logs / "stderr", "w") as se:
        proc = subprocess.Popen([sys.executable, "-m", "i2m2_ray.train", f"run_dir={tmp_path / 'run'}",
                                 f"dataset.path={small_dataset}", "variant=unimodal:image", "epochs=200",
                                 "patience=200", "tensorboard=false"], stdout=so, stderr=se, cwd=REPO,
                                env=child_env(PYTHONUNBUFFERED="1"), start_new_session=True)
    deadline = time.monotonic() + 240
    ckpts = tmp_path / "run" / "checkpoints"
    # the epoch's line is printed before its checkpoint is written: wait for the checkpoint, or a loaded
    # machine can deliver the signal between the two
    while not (ckpts.is_dir() and any(ckpts.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, tail(logs / "stderr")
    assert "epoch   1/" in (logs / "stdout").read_text()
    proc.send_signal(signal.SIGTERM)
    code = wait(proc, logs, 120)
    lines = stderr_lines(logs)
    assert code == 130, lines
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "resume" in lines[0], lines
    assert list((tmp_path / "run" / "checkpoints").iterdir())  # what finished is kept
