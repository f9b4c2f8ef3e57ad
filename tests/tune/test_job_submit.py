"""`ray job submit` end to end: a real Ray head of our own, jobs/submit.sh, the smoke experiment.

The head is a separate `ray start --head --block` process group on 127.0.0.1 with its own ports and
temp dir, so it neither joins nor disturbs the in-process cluster other tests start (tests/conftest.py)
or anyone else's Ray on this machine; it is stopped by its process group, never with `ray stop`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from tests.tune.procs import (
    REPO,
    SMOKE_OVERRIDES,
    SMOKE_VARIANTS,
    VENV_BIN,
    child_env,
    free_ports,
    http_answers,
    kill_group,
    kill_pids,
    pids_mentioning,
    start_group,
    tail,
    wait_until,
)

pytestmark = pytest.mark.slow

RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range: our fixed ports stay outside
HEAD_START_S = 90
JOB_TIMEOUT_S = 600  # ~2 min on an idle 2-core machine; generous for a shared, loaded one


@dataclass
class Head:
    address: str  # the dashboard's HTTP address, what `ray job submit` talks to
    gcs_port: int
    env: dict[str, str]  # the client environment: token auth on, venv on PATH, no RAY_ADDRESS
    temp_dir: Path
    log: Path


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[Head]:
    """A 2-CPU Ray head listening on loopback only, token auth on (Ray >= 2.59: ~/.ray/auth_token exists)."""
    logs = tmp_path_factory.mktemp("ray-head")
    # Short: the session's unix sockets live under it (108-byte path limit); pytest's tmp paths are long.
    temp_dir = Path(tempfile.mkdtemp(prefix="i2m2rj-", dir="/tmp"))
    gcs, dashboard, client, agent, metrics = free_ports(5, avoid=RAY_WORKER_PORTS)
    env = child_env(RAY_AUTH_MODE="token")
    # Ray turns --node-ip-address=127.0.0.1 into the machine's address and then binds all interfaces;
    # its single-node switch keeps the head's every port on loopback (README, Cluster).
    head_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = logs / "head.log"
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
           "--port", str(gcs), "--num-cpus", "2", "--num-gpus", "0",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--metrics-export-port", str(metrics), "--temp-dir", str(temp_dir)]
    proc = start_group(cmd, log, head_env)
    head = Head(address=f"http://127.0.0.1:{dashboard}", gcs_port=gcs, env=env, temp_dir=temp_dir, log=log)
    try:
        # The dashboard answers before the raylet has registered; the head is up once `ray start` says so.
        wait_until(lambda: http_answers(f"{head.address}/api/version") and "Ray runtime started" in log.read_text(
            errors="replace"), HEAD_START_S, "ray head", proc, log)
        yield head
    finally:
        kill_group(proc, grace_s=5)
        kill_pids(pids_mentioning(str(temp_dir)))  # workers/agents re-parented out of the group, by pid
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_cli(head: Head, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ray"), *args], env=head.env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO)


def driver_log(head: Head, submission_id: str) -> Path:
    logs = list(head.temp_dir.glob(f"session_2*/logs/job-driver-{submission_id}.log"))
    assert len(logs) == 1, logs
    return logs[0]


def submit(head: Head, tmp_path: Path, submission_id: str, *args: str, wait: bool = True) -> tuple[int, str]:
    """jobs/submit.sh against our head: its exit code and output."""
    log = tmp_path / f"{submission_id}.log"
    env = {**head.env, "RAY": str(VENV_BIN / "ray"), "I2M2_SUBMISSION_ID": submission_id,
           "I2M2_NO_WAIT": "0" if wait else "1"}
    proc = start_group(["bash", str(REPO / "jobs" / "submit.sh"), head.address, *args], log, env)
    try:
        proc.wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        ray_cli(head, "job", "stop", "--address", head.address, "--no-wait", submission_id)
        pytest.fail(f"job not finished within {JOB_TIMEOUT_S} s\n{tail(log)}\n--- head ---\n{tail(head.log)}")
    finally:
        kill_group(proc, grace_s=2)
    return proc.returncode, log.read_text(errors="replace")


def test_stop_then_resubmit_smoke_experiment(ray_head: Head, tmp_path: Path) -> None:
    """`ray job stop` (SIGTERM) ends the driver gracefully in one line; re-submitting resumes and finishes.

    jobs/submit.sh ships the code, the job runs on our head only, and writes one result row per variant.
    """
    out_dir = tmp_path / "experiment"
    first = f"i2m2-test-stop-{int(time.time())}"
    # Three epochs a trial: the stop lands while a phase runs (tests/tune/test_signals.py).
    args = [*SMOKE_OVERRIDES, "budget.max_epochs=3", "budget.grace_period=3", f"output_dir={out_dir}"]
    code, output = submit(ray_head, tmp_path, first, *args, wait=False)
    assert code == 0, output
    wait_until(lambda: any(p.stat().st_size for p in out_dir.glob("*/*/result.json")), JOB_TIMEOUT_S,
               "first trial report")
    stop = ray_cli(ray_head, "job", "stop", "--address", ray_head.address, first, timeout_s=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    status = ray_cli(ray_head, "job", "status", "--address", ray_head.address, first)
    assert f"Job '{first}' was stopped" in status.stdout + status.stderr, status.stdout + status.stderr
    # The driver stopped its trials, saved the experiment state and said so in one line, before Ray's
    # SIGKILL (RAY_JOB_STOP_WAIT_TIME_S in jobs/runtime_env.yaml); no native stack dump.
    wait_until(lambda: "interrupted: " in driver_log(ray_head, first).read_text(errors="replace"), 30,
               "the driver's last line", log=driver_log(ray_head, first))
    stopped_log = driver_log(ray_head, first).read_text(errors="replace")
    assert "SIGTERM received" not in stopped_log and "Traceback" not in stopped_log, stopped_log[-4000:]
    line = [ln for ln in stopped_log.splitlines() if ln.startswith("interrupted: ")]
    assert len(line) == 1 and " was stopped before all its trials finished; re-run the same command to resume" in (
        line[0]), stopped_log[-4000:]
    phase = line[0].split()[1]
    assert list((out_dir / phase).glob("experiment_state-*.json")), "Tune's experiment state was not saved"

    submission_id = f"i2m2-test-{int(time.time())}"
    code, output = submit(ray_head, tmp_path, submission_id, *args)
    assert code == 0, output[-8000:]
    status = ray_cli(ray_head, "job", "status", "--address", ray_head.address, submission_id)
    assert f"Job '{submission_id}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
    assert f"job {submission_id}: SUCCEEDED" in output
    assert f"results on the head in {out_dir}" in output  # the script says where the results are
    assert f"resuming {phase} from" in output

    for name in ("results.md", "results.csv", "results.parquet"):
        assert (out_dir / name).is_file(), f"{name} missing in {out_dir}: {sorted(p.name for p in out_dir.iterdir())}"
    for table in (pl.read_csv(out_dir / "results.csv"), pl.read_parquet(out_dir / "results.parquet")):
        assert sorted(table["variant"].to_list()) == sorted(SMOKE_VARIANTS)
        assert table["status"].to_list() == ["done"] * len(SMOKE_VARIANTS)
        assert table["test_accuracy_mean"].null_count() == 0
    markdown = (out_dir / "results.md").read_text()
    assert all(f"| {v} |" in markdown for v in SMOKE_VARIANTS)

    # The driver ran on our head and joined its GCS (RAY_ADDRESS set by the job supervisor), not another
    # Ray cluster on this machine; every trial reported once (2 per search + 1 final run per variant).
    assert re.search(rf"Connect\w* to existing Ray cluster at address: 127\.0\.0\.1:{ray_head.gcs_port}\b",
                     driver_log(ray_head, submission_id).read_text(errors="replace")), tail(
                         driver_log(ray_head, submission_id))
    assert len(list(out_dir.glob("*/*/result.json"))) == 3 * len(SMOKE_VARIANTS)


def test_submit_passes_arguments_literally_and_reports_failure(ray_head: Head, tmp_path: Path) -> None:
    """Shell syntax in an argument reaches the job as text (the head's shell runs none of it), where our
    validation rejects it as a bad value; the failed job makes jobs/submit.sh exit 1 and say FAILED."""
    made = [tmp_path / "made-by-semicolon", tmp_path / "made-by-substitution"]
    submission_id = f"i2m2-test-fail-{int(time.time())}"
    code, output = submit(ray_head, tmp_path, submission_id, "search_spaces/default.yaml",
                          f"seed=$(touch {made[1]})", f"name=x;touch {made[0]}", f"output_dir={tmp_path / 'never'}")
    assert code == 1, output
    assert f"error: seed: expected an integer, got '$(touch {made[1]})'" in output
    assert f"job {submission_id}: FAILED" in output
    assert not [p for p in made if p.exists()]
