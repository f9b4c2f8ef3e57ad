"""Faults in a training run: corrupt checkpoints and weights, a diverging loss, two runs on one directory.

Every case goes through ``python -m i2m2_ray.train`` on a small built-in dataset and checks the exact
one line a user sees, the exit code, and that the files an earlier run left are byte-for-byte intact.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from i2m2_ray.errors import CheckpointError
from i2m2_ray.train.session import Session, load_state_file

REPO = Path(__file__).resolve().parents[2]
SMALL = ["dataset.builtin.train_size=160", "dataset.builtin.val_size=60", "dataset.builtin.test_size=60",
         "tensorboard=false", "variant=unimodal:image", "keep_checkpoints=5", "patience=null"]
CORRUPTIONS = {
    "truncated": (lambda data: data[: len(data) // 2], "truncated or not a PyTorch file"),
    "garbage": (lambda data: b"this is not a checkpoint\n" * 40, "truncated or not a PyTorch file"),
    "empty": (lambda data: b"", "empty file"),
}


def cli(run: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "i2m2_ray.train", f"run_dir={run}", f"dataset.cache_dir={cache}", *SMALL, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one stderr line of a failed run (exit 2), without its ``error: `` prefix."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0][len("error: "):]


def trained_epochs(proc: subprocess.CompletedProcess) -> list[int]:
    return [int(m) for m in re.findall(r"^\[unimodal:image\] epoch +(\d+)/", proc.stdout, flags=re.MULTILINE)]


def checksums(run: Path, skip: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """sha256 of every file under ``run`` but ``skip`` (a resumed run rewrites config.yaml with its run_dir)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name not in skip}


def corrupt(path: Path, kind: str) -> str:
    damage, reason = CORRUPTIONS[kind]
    path.write_bytes(damage(path.read_bytes()))
    return reason


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("builtin-cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache) -> Path:
    """A finished 3-epoch run with every epoch's checkpoint kept; tests work on copies."""
    run = tmp_path_factory.mktemp("trained") / "run"
    proc = cli(run, cache, "epochs=3")
    assert proc.returncode == 0, proc.stderr
    assert trained_epochs(proc) == [1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001", "epoch_002", "epoch_003"]
    return run


@pytest.fixture
def run(tmp_path, trained) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_latest_checkpoint_resumes_from_the_previous_one(run, cache, kind):
    latest = run / "checkpoints" / "epoch_003" / "state.pt"
    reason = corrupt(latest, kind)
    before = {k: v for k, v in checksums(run).items() if k.startswith(("checkpoints/epoch_001",
                                                                        "checkpoints/epoch_002"))}
    proc = cli(run, cache, "epochs=4")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"warning: {latest} is unreadable ({reason}); resuming from epoch_002"]
    assert trained_epochs(proc) == [3, 4]  # epoch 3 trained again from epoch 2's state, then epoch 4
    assert load_state_file(latest)["epoch"] == 3  # rewritten whole
    assert load_state_file(run / "checkpoints" / "epoch_004" / "state.pt")["epoch"] == 4
    assert {k: v for k, v in checksums(run).items() if k in before} == before
    assert json.loads((run / "final.json").read_text())["epochs_run"] == 4


def test_every_checkpoint_unreadable_is_one_line(run, cache):
    for path in (run / "checkpoints").glob("epoch_*/state.pt"):
        corrupt(path, "garbage")
    before = checksums(run)
    proc = cli(run, cache, "epochs=4")
    assert error_line(proc) == (f"{run / 'checkpoints'}: no readable checkpoint left (newest, epoch_003/state.pt: "
                                "truncated or not a PyTorch file); remove the checkpoints or use a new run_dir")
    assert checksums(run) == before


@pytest.mark.parametrize("kind", ["truncated", "empty"])
def test_corrupt_model_weights_are_one_line(run, cache, kind):
    reason = corrupt(run / "model.pt", kind)
    before = checksums(run, skip=(".lock", "config.yaml"))
    proc = cli(run, cache, "epochs=3")  # nothing left to train: the final evaluation reads model.pt
    assert error_line(proc) == f"{run / 'model.pt'}: unreadable model weights ({reason})"
    assert checksums(run, skip=(".lock", "config.yaml")) == before


def test_corrupt_init_weights_are_one_line(tmp_path, cache, trained):
    bad = tmp_path / "stage1.pt"
    bad.write_bytes((trained / "model.pt").read_bytes()[:500])
    proc = cli(tmp_path / "run", cache, "variant=intra", f"init.image={bad}", "epochs=1")
    line = error_line(proc)
    assert line.startswith(f"{bad}: "), line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_diverging_loss_ends_the_run_in_one_line(tmp_path, cache):
    run = tmp_path / "run"
    proc = cli(run, cache, "epochs=3", "optim.lr=1e8", "optim.grad_clip=null")
    assert error_line(proc) == "unimodal:image epoch 1: training loss is nan; lower optim.lr or set optim.grad_clip"
    assert not (run / "checkpoints").exists() and not (run / "model.pt").exists()
    assert not (run / "final.json").exists()


def test_divergence_after_good_epochs_keeps_their_files(run, cache):
    """Epoch 3's checkpoint edited to hold a NaN weight: epoch 4 diverges, epochs 1-3 stay as they were."""
    path = run / "checkpoints" / "epoch_003" / "state.pt"
    state = torch.load(path, weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    torch.save(state, path)
    before = checksums(run, skip=(".lock", "config.yaml"))
    proc = cli(run, cache, "epochs=5")
    assert error_line(proc) == "unimodal:image epoch 4: training loss is nan; lower optim.lr or optim.grad_clip"
    assert checksums(run, skip=(".lock", "config.yaml")) == before
    assert not (run / "checkpoints" / "epoch_004").exists()


def test_second_training_on_one_run_dir_fails_and_first_finishes(tmp_path, cache):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "i2m2_ray.train", f"run_dir={run}", f"dataset.cache_dir={cache}", *SMALL,
           "epochs=25"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.time() + 300  # generous: the machine is shared; this bounds a hang, not speed
        while not (run / "checkpoints" / "epoch_001" / "state.pt").is_file():
            assert first.poll() is None and time.time() < deadline, "first run never wrote a checkpoint"
            time.sleep(0.1)
        first.send_signal(signal.SIGSTOP)  # paused mid-run, lock held: no race with the second's start-up
        config_before = (run / "config.yaml").read_bytes()
        second = cli(run, cache, "epochs=25")
        first.send_signal(signal.SIGCONT)
        assert error_line(second) == (f"{run}: another training run is in progress there (pid {first.pid}); "
                                      "wait for it to finish or use another directory")
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert (run / "config.yaml").read_bytes() == config_before
    assert json.loads((run / "final.json").read_text())["epochs_run"] == 25
    assert re.findall(r"epoch +(\d+)/25", out) == [str(e) for e in range(1, 26)]


def test_unloadable_session_checkpoint_names_its_path(tmp_path):
    """Ray Train / Tune sessions name the checkpoint's storage path, not the local copy they read."""
    local = tmp_path / "state.pt"
    local.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError) as err:
        load_state_file(local, shown="/storage/trial_7/checkpoint_000002/state.pt")
    assert str(err.value) == ("/storage/trial_7/checkpoint_000002/state.pt: unreadable checkpoint "
                              "(truncated or not a PyTorch file)")
    torch.save({"model": {}}, local)  # readable, but not a training state
    with pytest.raises(CheckpointError, match=r"state.pt: unreadable checkpoint \(not a training checkpoint"):
        load_state_file(local)


def test_session_base_class_defaults_run_the_loop(tmp_path, cache):
    """A session that overrides only ``report`` trains: every other hook has a working default."""
    from i2m2_ray.train import load_train_config, train

    class Recording(Session):
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def report(self, metrics, state):
            self.epochs.append(state["epoch"])

    session = Recording()
    cfg = load_train_config(None, [f"run_dir={tmp_path / 'run'}", f"dataset.cache_dir={cache}", *SMALL, "epochs=2"])
    result = train(cfg, session=session, console=False)
    assert session.epochs == [1, 2] and result["epochs_run"] == 2
    assert not (tmp_path / "run" / "checkpoints").exists()  # the base session keeps no checkpoints

