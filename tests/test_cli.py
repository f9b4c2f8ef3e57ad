"""Every CLI maps failures the same way: one stderr line; exit 2 bad input, 130 interrupted, 1 otherwise.

Real processes, real files: the bad inputs are real (a run directory under a regular file, an unknown
key), the interrupt is a real SIGINT after the first epoch, the full disk is a real write to /dev/full.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line(proc: subprocess.CompletedProcess, code: int, prefix: str = "error: ") -> str:
    """The single stderr line of a failed CLI (nothing else: no traceback, no Ray start-up noise)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


@pytest.fixture
def regular_file(tmp_path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


# -- bad input: exit 2 ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("module", "args", "fragment"), [
    ("i2m2_ray.train", ["optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
    ("i2m2_ray.tune", ["budgett.trials=2"], "unknown config key 'budgett'"),
    ("i2m2_ray.data", ["validate", "/nonexistent-i2m2-dataset"], "/nonexistent-i2m2-dataset"),
    ("i2m2_ray.report", ["/nonexistent-i2m2-experiment"], "not an experiment directory"),
])
def test_user_errors_are_one_line_exit_2(module, args, fragment):
    assert fragment in one_line(run("-m", module, *args), 2)


@pytest.mark.parametrize(("module", "args"), [
    ("i2m2_ray.train", []), ("i2m2_ray.tune", []), ("i2m2_ray.data", ["validate", "somewhere"]),
    ("i2m2_ray.report", ["somewhere"]),
])
def test_usage_errors_are_one_line_exit_2(module, args):
    line = one_line(run("-m", module, *args, "--no-such-option"), 2)
    assert line.startswith("error: i2m2-") and line.endswith("unrecognized arguments: --no-such-option (see --help)")


def test_train_run_dir_under_a_regular_file(tmp_path, small_dataset, regular_file):
    proc = run("-m", "i2m2_ray.train", f"run_dir={regular_file / 'run'}", f"dataset.path={small_dataset}",
               "variant=unimodal:image", "epochs=1", "tensorboard=false")
    assert one_line(proc, 2) == f"error: {regular_file / 'run'}: Not a directory"


def test_tune_output_dir_under_a_regular_file(tmp_path, regular_file):
    proc = run("-m", "i2m2_ray.tune", "--smoke", f"output_dir={regular_file / 'exp'}")
    assert one_line(proc, 2) == f"error: {regular_file / 'exp'}: Not a directory"


def test_data_out_under_a_regular_file(regular_file):
    proc = run("-m", "i2m2_ray.data", "prepare", "builtin", "--out", str(regular_file / "data"), "--quiet")
    line = one_line(proc, 2)
    assert line.startswith(f"error: {regular_file}") and ("File exists" in line or "Not a directory" in line), line


# -- --smoke and shipped names -------------------------------------------------------------------------------

def test_smoke_flag_loads_the_shipped_smoke_experiment():
    # grace_period=2 is valid for the default experiment (max_epochs 8) but not for smoke (max_epochs 1)
    line = one_line(run("-m", "i2m2_ray.tune", "budget.grace_period=2", "--smoke"), 2)
    assert "budget.grace_period: must be in [1, max_epochs=1]" in line


def test_bare_name_is_a_shipped_experiment():
    line = one_line(run("-m", "i2m2_ray.tune", "smoke", "budget.grace_period=2"), 2)
    assert "max_epochs=1" in line
    line = one_line(run("-m", "i2m2_ray.tune", "default", "budget.grace_period=20"), 2)
    assert "max_epochs=6" in line


def test_unknown_shipped_name_lists_the_shipped_ones():
    line = one_line(run("-m", "i2m2_ray.tune", "nosuch"), 2)
    assert "no shipped experiment 'nosuch'" in line and "default" in line and "smoke" in line


def test_smoke_and_an_experiment_file_conflict():
    line = one_line(run("-m", "i2m2_ray.tune", "--smoke", "search_spaces/default.yaml"), 2)
    assert "--smoke" in line


def test_smoke_file_is_small():
    from i2m2_ray.resources import shipped_experiment
    from i2m2_ray.tune.experiment import load_experiment

    exp = load_experiment(shipped_experiment("smoke"))
    assert exp.variants == ["unimodal:image", "unimodal:audio", "inter:lf", "i2m2:lf"]
    assert (exp.budget.trials, exp.budget.max_epochs, exp.final.seeds) == (2, 1, [0])
    assert exp.output_dir == "runs/smoke" and exp.dataset.path is None


# -- interrupted: exit 130 -----------------------------------------------------------------------------------

def test_train_sigint_after_the_first_epoch(tmp_path, small_dataset):
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as so, open(err, "w") as se:
        proc = subprocess.Popen([sys.executable, "-m", "i2m2_ray.train", f"run_dir={tmp_path / 'run'}",
                                 f"dataset.path={small_dataset}", "variant=unimodal:image", "epochs=200",
                                 "patience=200", "tensorboard=false"], stdout=so, stderr=se, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 240  # generous: the 2 CPUs may be shared
        while "epoch   1/" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, err.read_text()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in err.read_text().splitlines() if ln.strip()]
    assert code == 130, err.read_text()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "resume" in lines[0], lines
    assert (tmp_path / "run" / "checkpoints").is_dir()  # what finished is kept


# -- the wrapper's other classes, with real exceptions -------------------------------------------------------

def wrapped(body: str, **env: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom i2m2_ray.cli import Stopped, run_cli\n"
            f"def body():\n    {body}\nsys.exit(run_cli(body))\n")
    return run("-c", code, env=env)


def test_disk_full_is_one_line_exit_1():
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    line = one_line(wrapped("open('/dev/full', 'wb', buffering=0).write(b'x')"), 1)
    assert line == "error: No space left on device"


def test_a_bug_is_one_line_exit_1_and_the_traceback_on_request():
    line = one_line(wrapped("return {}['missing']"), 1, prefix="internal error: ")
    assert line == "internal error: KeyError: 'missing' (set I2M2_DEBUG=1 for the traceback)"
    debug = wrapped("return {}['missing']", I2M2_DEBUG="1")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == line


def test_stopped_carries_its_own_line():
    assert one_line(wrapped("raise Stopped('search-x was stopped; re-run to resume')"), 130,
                    prefix="interrupted: ") == "interrupted: search-x was stopped; re-run to resume"


def test_a_file_error_names_the_file(tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    assert one_line(wrapped(f"open({str(target)!r}, 'w')"), 2) == f"error: {target}: Is a directory"
