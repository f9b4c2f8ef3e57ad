"""The Tune trial: the training loop, run in-process inside the trial, reporting to Tune.

A single-worker trial runs ``i2m2_ray.train.loop.train`` directly (about 1.5 s of trial
overhead instead of 12-15 s for a Train worker group); the session below turns the
loop's per-epoch reports into ``ray.tune.report`` calls with a checkpoint attached.

The trial's directory is this node's scratch. The best weights travel in every checkpoint (so a
trial restored on another node evaluates the right epoch, and the driver can keep the weights of
a trial the scheduler stopped: phases.py); ``init.pt`` and ``config.yaml`` are copied to the
trial's directory in the experiment storage at the first report, and everything the loop wrote
(``model.pt``, ``final.json``, curves) before the trial returns, so the driver and stage-2 trials on
any node read them there.
Ray's own upload of the trial directory is the driver's background sync of its local staging
directory, which only sees trials that ran on the driver's node, so it is not relied on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from i2m2_ray.config import from_dict
from i2m2_ray.errors import I2M2Error, TrainingDiverged
from i2m2_ray.train.config import TrainConfig
from i2m2_ray.train.loop import INIT_FILE, MODEL_FILE, RESULT_FILE, train
from i2m2_ray.train.session import STATE_FILE, Session, load_state_file, save_state
from i2m2_ray.tune.space import searched_values, with_values

ARTIFACTS = (MODEL_FILE, RESULT_FILE, INIT_FILE, "config.yaml", "tensorboard")
EARLY_ARTIFACTS = (INIT_FILE, "config.yaml")
BEST_IN_CHECKPOINT = "best_model.pt"


class TuneSession(Session):
    """Reports each epoch to Tune and resumes from the trial's last checkpoint after a restore."""

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.reports = 0
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        from ray import tune

        self.reports += 1
        metrics = {**metrics, **where()}
        if self.reports == 1 and self.run_dir is not None:
            publish(self.run_dir, EARLY_ARTIFACTS)  # a trial the scheduler stops never returns to publish them
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="i2m2-ckpt-") as tmp:
            save_state(state, Path(tmp))
            best = self.run_dir / MODEL_FILE if self.run_dir is not None else None
            if best is not None and best.is_file():
                _link_or_copy(best, Path(tmp) / BEST_IN_CHECKPOINT)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def load_state(self) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as path:
            best = Path(path) / BEST_IN_CHECKPOINT
            if self.run_dir is not None and best.is_file():  # this node's scratch may never have seen it
                self.run_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(best, self.run_dir / MODEL_FILE)
            return load_state_file(Path(path) / STATE_FILE, shown=f"{checkpoint.path}/{STATE_FILE}")


def where() -> dict[str, str]:
    """The node this trial process runs on (Ray's hex node id), reported with every result: a trial
    restarted elsewhere after a node loss shows both nodes in its ``result.json``."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id()}


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where it can (``model.pt`` is replaced by rename, never rewritten in place), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def publish(run_dir: Path, names: tuple[str, ...] = ARTIFACTS) -> None:
    """The loop's files, from this node's scratch to the trial's directory in the experiment storage.

    Synchronous and before the trial returns, so when Tune marks the trial finished the driver can
    read them (Ray's ``SyncConfig(sync_artifacts=True)`` syncs in the background, on its own period).
    """
    from ray.train._internal.session import get_storage

    from i2m2_ray.storage import Storage

    context = get_storage()
    dest = Storage.on(context.storage_filesystem, context.trial_fs_path)
    if not dest.remote and Path(dest.root).resolve() == run_dir.resolve():  # the trial wrote in place
        return
    for name in names:
        src = run_dir / name
        if src.is_dir():
            dest.upload_dir(src, name)
        elif src.is_file():
            dest.write_bytes(name, src.read_bytes())


def trial_config(config: dict[str, Any], trial_dir: str) -> TrainConfig:
    """Every searched dotted path set inside the experiment's base config; the trial directory is the run dir.

    Final runs carry their whole setting in ``config["run"]`` (a grid over variants x seeds).
    """
    merged = {**config, **config.get("run", {})}
    base = with_values(merged["base"], searched_values(config))
    if "seed" in merged:
        base["seed"] = merged["seed"]
    base["run_dir"] = trial_dir
    return from_dict(TrainConfig, base)


def user_error(exc: BaseException) -> I2M2Error | None:
    """The user error behind ``exc``, also when a Ray Train worker raised it (wrapped by Train)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, I2M2Error):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        todo += list((getattr(e, "worker_failures", None) or {}).values())
    return None


def failure_status(error: I2M2Error) -> str:
    if isinstance(error, TrainingDiverged):
        return "diverged"
    return "error: " + (str(error).splitlines() or [type(error).__name__])[0]


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable (module level, so it pickles).

    One worker: the loop runs here, in the trial's process. More: the trial drives a TorchTrainer
    whose run lives in the trial directory (a stable name, so a restored trial resumes it) and
    whose rank-0 reports reach Tune through ``TuneReportCallback``.

    A user error (divergence, bad data, a missing init file) ends the trial normally with
    ``trial_status`` and a NaN metric: retrying would fail the same way, and the search goes on.
    Crashes (a dead worker, anything else) still raise, so Tune's FailureConfig retries them.
    """
    from ray import tune

    cfg = trial_config(config, tune.get_context().get_trial_dir())
    session = TuneSession(cfg.run_dir)
    try:
        result = _train(cfg, session)
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        tune.report({f"val/{cfg.metric}_best": float("nan"), "trial_status": failure_status(error),
                     "epochs_run": session.reports, **where()})
        return
    publish(Path(cfg.run_dir))
    if result is not None and session.reports == 0:
        # Restored after the last checkpoint was written (driver killed at the very end): the loop had
        # nothing left to run, but Tune needs the trial's final metrics once more.
        # Marked, so nobody mistakes it for a second training of the last epoch.
        tune.report({**result, "epoch": result["epochs_run"], "final_rereport": True, **where()})


def _train(cfg: TrainConfig, session: TuneSession) -> dict[str, Any] | None:
    from i2m2_ray.train.distributed import build_trainer, use_ray

    if use_ray(cfg):
        from ray.tune.integration.ray_train import TuneReportCallback

        build_trainer(cfg, callbacks=[TuneReportCallback()]).fit()
        return None
    return train(cfg, session=session, console=False)
