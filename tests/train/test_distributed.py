"""Ray Train: real local cluster, real worker processes, real SIGKILL, real TensorBoard files.

Tolerance for "2 workers == 1 worker": on a model without BatchNorm (feature-vector MLP experts)
DDP over 2 workers with the same global batch and seed differs from one worker only in float
summation order (gradient all-reduce vs one batch mean), so losses must agree to 1e-4 absolute
after 3 epochs (observed: 2e-8 in loss, 3e-8 in weights). With BatchNorm the statistics are per-rank (half the batch
each) so runs differ by design (~1e-2 in loss after 2 epochs); SyncBatchNorm is CUDA-only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from i2m2_ray.errors import ConfigError
from i2m2_ray.train.config import load_train_config
from i2m2_ray.train.distributed import check_placement, run_training, use_ray

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3


def config(run_dir: Path, dataset: Path, **over):
    items = [f"run_dir={run_dir}", f"dataset.path={dataset}", "optim.batch_size=40", f"epochs={EPOCHS}",
             "variant=i2m2:lf", "max_failures=1"]
    return load_train_config(None, items + [f"{k}={v}" for k, v in over.items()])


def scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar in every event file under ``tb_dir``: tag -> {step: value} (later files win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


@pytest.fixture(scope="module")
def features_dataset(tmp_path_factory) -> Path:
    """Two feature-vector modalities (MLP experts: no BatchNorm), labels from both."""
    import pyarrow as pa

    from i2m2_ray.data.format import Manifest, ModalitySpec, tensor_array
    from i2m2_ray.data.writer import write_dataset

    rng = np.random.default_rng(0)
    w_a, w_b = rng.standard_normal((16, 4)), rng.standard_normal((8, 4))
    tables = {}
    for split, rows in (("train", 400), ("val", 120), ("test", 120)):
        a = rng.standard_normal((rows, 16)).astype(np.float32)
        b = rng.standard_normal((rows, 8)).astype(np.float32)
        y = (a @ w_a + b @ w_b + 0.5 * rng.standard_normal((rows, 4))).argmax(1)
        tables[split] = pa.table({"sample_id": pa.array([f"{split}-{i}" for i in range(rows)]),
                                  "a": tensor_array(a), "b": tensor_array(b), "label": pa.array(y, pa.int64())})
    manifest = Manifest(name="features", task="multiclass", classes=["0", "1", "2", "3"], splits={},
                        modalities={"a": ModalitySpec("features", "a", [16]), "b": ModalitySpec("features", "b", [8])})
    return write_dataset(tmp_path_factory.mktemp("features") / "ds", manifest, tables)


# ---------------------------------------------------------------- fast: launcher choice and config checks

def test_launcher_is_in_process_for_one_worker_unless_forced(tmp_path, small_dataset):
    assert not use_ray(config(tmp_path, small_dataset))
    assert use_ray(config(tmp_path, small_dataset, workers=2))
    assert use_ray(config(tmp_path, small_dataset, launcher="ray"))
    assert not use_ray(config(tmp_path, small_dataset, launcher="local"))


@pytest.mark.parametrize(("over", "fragment"), [
    ({"workers": 3}, "optim.batch_size: 40 is the global batch and must be divisible by workers=3"),
    ({"workers": 2, "launcher": "local"}, "launcher=local runs one worker in-process"),
    ({"strategy": "zero"}, "strategy: must be ddp or fsdp"),
    ({"workers": 0}, "workers: must be >= 1"),
])
def test_bad_distributed_settings_fail_on_load(tmp_path, small_dataset, over, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        config(tmp_path, small_dataset, **over)


def test_single_worker_run_needs_no_ray(tmp_path, small_dataset):
    """workers=1 trains in-process; Ray is never imported (it is blocked here)."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'ray':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from i2m2_ray.train import load_train_config, run_training
cfg = load_train_config(None, ['run_dir={tmp_path / "run"}', 'dataset.path={small_dataset}', 'epochs=1',
                               'variant=unimodal:image', 'tensorboard=false'])
print('epochs_run', run_training(cfg, console=False)['epochs_run'])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "epochs_run 1" in proc.stdout


def test_impossible_placement_fails_fast(ray_local, tmp_path, small_dataset):
    cfg = config(tmp_path / "run", small_dataset, workers=4)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run_training(cfg)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "\n" not in msg and "workers=4" in msg and "has 2 CPU" in msg
    check_placement(config(tmp_path / "ok", small_dataset, workers=2), use_gpu=False)  # 2 x 1 CPU fits


@pytest.mark.slow
def test_cli_four_workers_on_two_cpus_is_one_line_error(tmp_path, small_dataset):
    env = {**os.environ, "RAY_ADDRESS": ""}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "i2m2_ray.train", "workers=4", f"run_dir={tmp_path / 'run'}",
                           f"dataset.path={small_dataset}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert time.perf_counter() - t0 < 90
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: workers=4 x (1 CPU, "), proc.stderr  # then its memory


# ---------------------------------------------------------------- slow: real TorchTrainer runs

@pytest.fixture(scope="module")
def ddp_vs_local(ray_local, tmp_path_factory, features_dataset):
    root = tmp_path_factory.mktemp("ddp")
    local = run_training(config(root / "local", features_dataset), console=False)
    ddp = run_training(config(root / "ddp", features_dataset, workers=2))
    return root, local, ddp


@pytest.mark.slow
def test_two_worker_ddp_matches_one_worker(ddp_vs_local):
    root, local, ddp = ddp_vs_local
    assert local["epochs_run"] == ddp["epochs_run"] == EPOCHS
    for key in ("val/loss", "test/loss", "expert/a/loss", "expert/inter/loss"):
        assert abs(local[key] - ddp[key]) < 1e-4, (key, local[key], ddp[key])
    assert local["val/accuracy"] == ddp["val/accuracy"]
    per_epoch_local = scalars(root / "local" / "tensorboard")["train/loss"]
    per_epoch_ddp = scalars(root / "ddp" / "tensorboard")["train/loss"]  # averaged over both ranks
    assert sorted(per_epoch_ddp) == list(range(1, EPOCHS + 1))
    for epoch, value in per_epoch_local.items():
        assert abs(value - per_epoch_ddp[epoch]) < 1e-4, (epoch, value, per_epoch_ddp[epoch])
    a = torch.load(root / "local" / "model.pt", weights_only=True)
    b = torch.load(root / "ddp" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


@pytest.mark.slow
def test_ray_run_writes_tensorboard_and_checkpoints_on_rank0(ddp_vs_local):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, ddp = ddp_vs_local
    tags = scalars(root / "ddp" / "tensorboard")
    for tag in ("train/loss", "val/loss", "val/accuracy", "val/auroc", "lr", "expert/a/accuracy",
                "expert/b/loss", "expert/inter/accuracy", "test/accuracy"):
        assert tag in tags, (tag, sorted(tags))
    assert sorted(tags["val/accuracy"]) == list(range(1, EPOCHS + 1))
    files = list((root / "ddp" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1  # rank 0 only
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    assert "val/confusion_matrix" in acc.Tags()["images"]
    kept = sorted(p.name for p in (root / "ddp" / "checkpoints").glob("epoch_*"))
    assert f"epoch_{EPOCHS:03d}" in kept and len(kept) <= 3  # best 2 by val/accuracy + the latest
    state = torch.load(root / "ddp" / "checkpoints" / kept[-1] / "state.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "best", "config"} <= set(state)
    assert state["config"]["workers"] == 2


@pytest.mark.slow
def test_fsdp_full_state_dict_loads_into_plain_model(ray_local, tmp_path, small_dataset):
    from i2m2_ray.data.format import load_manifest
    from i2m2_ray.data.memory import InMemoryData
    from i2m2_ray.models import build_model
    from i2m2_ray.train.epoch import evaluate
    from i2m2_ray.train.loop import prepare_run

    cfg = config(tmp_path / "run", small_dataset, workers=2, strategy="fsdp", epochs=2, tensorboard="false")
    result = run_training(cfg)
    assert result["epochs_run"] == 2 and result["val/accuracy"] > 0
    root, manifest, mods = prepare_run(cfg)
    plain = build_model(load_manifest(root), cfg.variant, cfg.model)
    plain.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))  # strict: all keys
    data = InMemoryData(root, manifest, mods)
    val, _, _ = evaluate(plain, data.eval_batches("val", 256), torch.device("cpu"), manifest, "val")
    assert val["val/accuracy"] == result["val/accuracy"]
    assert abs(val["val/loss"] - result["val/loss"]) < 1e-5


@pytest.mark.slow
def test_sigkilled_worker_is_replaced_and_run_resumes_from_checkpoint(ray_local, tmp_path, small_dataset):
    from ray.util.state import list_actors

    run = tmp_path / "run"
    epochs = 5
    cfg = config(run, small_dataset, workers=2, epochs=epochs, patience="null")
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(result=run_training(cfg)), daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not (run / "checkpoints" / "epoch_001" / "state.pt").is_file():
        assert time.time() < deadline and thread.is_alive(), "no first checkpoint"
        time.sleep(0.05)
    address = ray_local.get_runtime_context().gcs_address  # this session's cluster, not another one here
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert len(workers) == 2
    victim = max(workers, key=lambda a: a.pid).pid
    os.kill(victim, signal.SIGKILL)
    killed_at = max(int(p.name[6:]) for p in (run / "checkpoints").glob("epoch_*"))
    thread.join(timeout=180)
    assert not thread.is_alive() and "result" in out, "run did not finish after the worker was killed"
    assert out["result"]["epochs_run"] == epochs
    assert killed_at < epochs, "the run ended before the kill landed"
    # One TensorBoard file per worker-group start; the second starts right after a saved epoch, not at 1.
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2
    resumed_steps = scalars_of(files[-1], "train/loss")
    assert 2 <= min(resumed_steps) <= killed_at + 1 and max(resumed_steps) == epochs
    assert sorted(scalars(run / "tensorboard")["train/loss"]) == list(range(1, epochs + 1))


def scalars_of(path: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_diverging_worker_surfaces_as_one_line_training_diverged(ray_local, tmp_path, small_dataset):
    """A TrainingDiverged raised in every Ray Train worker reaches the caller as itself, not a traceback."""
    from i2m2_ray.errors import TrainingDiverged

    cfg = config(tmp_path / "run", small_dataset, workers=2, max_failures=0, tensorboard="false",
                 **{"optim.lr": 1e8, "optim.grad_clip": "null"})
    with pytest.raises(TrainingDiverged) as err:
        run_training(cfg)
    assert str(err.value) == "i2m2:lf epoch 1: training loss is nan; lower optim.lr or set optim.grad_clip"
    assert not list((tmp_path / "run" / "checkpoints").glob("epoch_*"))


@pytest.mark.slow
def test_ray_run_with_only_unreadable_checkpoints_fails_in_one_line(ray_local, tmp_path, small_dataset):
    """Resuming an in-process run under Ray Train: its checkpoints all unreadable -> CheckpointError naming them."""
    from i2m2_ray.errors import CheckpointError

    run = tmp_path / "run"
    run_training(config(run, small_dataset, epochs=1, tensorboard="false"), console=False)
    state = run / "checkpoints" / "epoch_001" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError) as err:
        run_training(config(run, small_dataset, workers=2, epochs=2, max_failures=0, tensorboard="false"))
    assert str(err.value) == (f"{run / 'checkpoints'}: no readable checkpoint left (newest, epoch_001/state.pt: "
                              "truncated or not a PyTorch file); remove the checkpoints or use a new run_dir")
