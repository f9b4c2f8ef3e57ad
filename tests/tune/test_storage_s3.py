"""The smoke experiment on a real S3 API (moto's server on loopback), with nothing kept on local disks.

One experiment serves every test here (a smoke run costs about a minute): its driver is interrupted
once stage 1 is recorded, every local Ray session directory and trial directory of that run is
deleted, a second driver resumes from S3 alone, its local directories are deleted too, and then
``python -m i2m2_ray.report s3://...`` runs from an unrelated directory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.s3_server import moto_s3
from tests.tune.procs import SMOKE_EXPERIMENT, child_env, kill_pids, pids_mentioning

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET, PREFIX = "i2m2-exp", "runs/smoke"
STAGE1 = ("search-unimodal-image", "search-unimodal-audio", "search-inter-lf")
EXPERTS = {"image": "unimodal:image", "audio": "unimodal:audio", "inter": "inter:lf"}


def _driver(uri: str, ray_tmp: Path, cwd: Path) -> subprocess.Popen:
    """``python -m i2m2_ray.tune`` with its own Ray temp dir (every session and trial dir of the run in it)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = child_env(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=os.environ.get("PYTHONPATH", str(REPO)))
    return subprocess.Popen([sys.executable, "-m", "i2m2_ray.tune", str(SMOKE_EXPERIMENT), f"output_dir={uri}",
                             "--num-cpus", "2"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"driver did not finish in {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def _wipe(ray_tmp: Path) -> None:
    """Delete the run's local Ray directories (after any process still using them is gone)."""
    sessions = list((ray_tmp / "ray").glob("session_2*"))
    assert sessions, f"no Ray session under {ray_tmp}: RAY_TMPDIR was not honoured"
    assert list(ray_tmp.glob("ray/session_2*/artifacts/*/*/driver_artifacts/trial_*")), "no local trial dirs"
    kill_pids(pids_mentioning(str(ray_tmp)))
    shutil.rmtree(ray_tmp)


def _markdown_table(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")][:6]


@pytest.fixture(scope="module")
def s3_run():
    scratch = Path(tempfile.mkdtemp(prefix="i2m2-s3-", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        with moto_s3() as s3:
            s3.create_bucket(BUCKET)
            uri = s3.uri(BUCKET, PREFIX)
            first = _driver(uri, scratch / "ray1", scratch / "cwd1")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and first.poll() is None:
                keys = s3.keys(BUCKET, f"{PREFIX}/state.json")
                if keys and all(p in json.loads(s3.get(BUCKET, keys[0]))["phases"] for p in STAGE1):
                    break
                time.sleep(0.3)
            assert first.poll() is None, "experiment ended before stage 2 could be interrupted"
            os.kill(first.pid, signal.SIGINT)
            code, out1, err1 = _finish(first, 240)
            assert code == 130, (out1[-2000:], err1[-2000:])
            interrupted = json.loads(s3.get(BUCKET, f"{PREFIX}/state.json"))["phases"]
            _wipe(scratch / "ray1")
            shutil.rmtree(scratch / "cwd1")

            code, out2, err2 = _finish(_driver(uri, scratch / "ray2", scratch / "cwd2"), 900)
            assert code == 0, (out2[-3000:], err2[-3000:])
            _wipe(scratch / "ray2")
            shutil.rmtree(scratch / "cwd2")

            elsewhere = scratch / "elsewhere"
            elsewhere.mkdir()
            report = subprocess.run([sys.executable, "-m", "i2m2_ray.report", uri], cwd=elsewhere,
                                    env=child_env(PYTHONPATH=os.environ.get("PYTHONPATH", str(REPO))),
                                    capture_output=True, text=True, timeout=300)
            yield {"s3": s3, "uri": uri, "interrupted": interrupted, "resumed_out": out2, "report": report,
                   "scratch": scratch}
    finally:
        kill_pids(pids_mentioning(str(scratch)))
        shutil.rmtree(scratch, ignore_errors=True)


def _get(run, rel: str) -> bytes:
    return run["s3"].get(BUCKET, f"{PREFIX}/{rel}")


def _tensors(run, rel: str, expert: str) -> dict[str, torch.Tensor]:
    state = torch.load(io.BytesIO(_get(run, rel)), weights_only=True)
    return {k: v for k, v in state.items() if k.startswith(f"experts.{expert}.")}


def test_interrupted_after_stage1_then_resumed_from_s3_alone(s3_run):
    assert set(STAGE1) <= set(s3_run["interrupted"]) and "final" not in s3_run["interrupted"]
    for variant in EXPERTS.values():
        assert f"{variant}: search already finished" in s3_run["resumed_out"]
    state = json.loads(_get(s3_run, "state.json"))["phases"]
    assert {p: state[p]["best"] for p in STAGE1} == {p: s3_run["interrupted"][p]["best"] for p in STAGE1}


def test_stage2_starts_from_the_stage1_weights_in_s3(s3_run):
    """Stage-2 search trials from the best stage-1 search trials, final seed s from the seed-s stage-1 finals:
    each trial's init.pt (written by the trial, uploaded to S3) equals the source model.pt read from S3."""
    state = json.loads(_get(s3_run, "state.json"))["phases"]
    best = {e: state[f"search-{v.replace(':', '-')}"]["model_path"] for e, v in EXPERTS.items()}
    finals = {(r["variant"], r["seed"]): f"{r['trial_dir']}/model.pt" for r in state["final"]["runs"]}
    stage2 = state["search-i2m2-lf"]["trials"]
    stage2_finals = [r for r in state["final-stage2"]["runs"] if r["variant"] == "i2m2:lf"]
    assert len(stage2) == 2 and len(stage2_finals) == 1
    assert state["search-i2m2-lf"]["init"] == best
    for trial in stage2 + stage2_finals:
        assert not trial["trial_dir"].startswith("/"), trial["trial_dir"]  # relative to the experiment root
        sources = best if trial in stage2 else {e: finals[(v, trial["seed"])] for e, v in EXPERTS.items()}
        for expert, source in sources.items():
            want, got = _tensors(s3_run, source, expert), _tensors(s3_run, f"{trial['trial_dir']}/init.pt", expert)
            assert want and set(got) == set(want)
            assert all(torch.equal(got[k], want[k]) for k in want), (trial["trial_dir"], expert)


def test_report_from_another_directory_prints_the_same_table(s3_run):
    report = s3_run["report"]
    assert report.returncode == 0, report.stderr[-3000:]
    table = _markdown_table(report.stdout)
    assert table == _markdown_table(s3_run["resumed_out"].split("=== results")[1])
    assert table == _markdown_table(_get(s3_run, "results.md").decode())
    assert len(table) == 6 and all("| 1 |" in row or "| 2 |" in row for row in table[2:])
    assert "dependency diagnosis" in report.stdout and "missing modality" in report.stdout
    assert not list(s3_run["scratch"].glob("ray*")), "local Ray directories were not deleted"


def test_every_file_the_service_writes_is_in_s3(s3_run):
    keys = set(s3_run["s3"].keys(BUCKET, PREFIX))
    for name in ("state.json", "experiment.yaml", "results.md", "results.csv", "results.parquet"):
        assert f"{PREFIX}/{name}" in keys, name
    state = json.loads(_get(s3_run, "state.json"))["phases"]
    trials = [t for p in (*STAGE1, "search-i2m2-lf") for t in state[p]["trials"]]
    runs = state["final"]["runs"] + state["final-stage2"]["runs"]
    for row in trials + runs:
        files = {k.rsplit("/", 1)[1] for k in keys if k.startswith(f"{PREFIX}/{row['trial_dir']}/")}
        assert {"model.pt", "config.yaml", "result.json"} <= files, (row["trial_dir"], files)
        assert any(f.startswith("events.out.tfevents") for f in files), row["trial_dir"]  # Tune's TBX logger
    for run in runs:
        assert json.loads(_get(s3_run, f"{run['trial_dir']}/final.json")) == run["final"]
        assert any(k.startswith(f"{PREFIX}/{run['trial_dir']}/tensorboard/events.out") for k in keys)
