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

import tempfile
from pathlib import Path
from typing import Any

from i2m2_ray.config import from_dict
from i2m2_ray.errors import I2M2Error, TrainingDiverged
from i2m2_ray.train.config import TrainConfig
from i2m2_ray.train.loop import ARTIFACTS, EARLY_ARTIFACTS, MODEL_FILE, REPORT_ARTIFACTS, train
from i2m2_ray.train.session import STATE_FILE, Session, add_best, load_state_file, restore_best, save_state
from i2m2_ray.tune.space import searched_values, with_values


class TuneSession(Session):
    """Reports each epoch to Tune and resumes from the trial's last checkpoint after a restore."""

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.reports = 0
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        from ray import tune

        self.reports += 1
        metrics = {**metrics, **where()}
        if self.run_dir is not None:  # a stopped trial never publishes at its end
            trial_storage().publish(self.run_dir, (*EARLY_ARTIFACTS, *REPORT_ARTIFACTS) if self.reports == 1
                                    else REPORT_ARTIFACTS)
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="i2m2-ckpt-") as tmp:
            save_state(state, Path(tmp))
            if self.run_dir is not None:
                add_best(Path(tmp), self.run_dir / MODEL_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def load_state(self) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as path:
            if self.run_dir is not None:
                restore_best(Path(path), self.run_dir / MODEL_FILE)
            return load_state_file(Path(path) / STATE_FILE, shown=f"{checkpoint.path}/{STATE_FILE}")


def where() -> dict[str, str]:
    """The node this trial process runs on (Ray's hex node id), reported with every result: a trial
    restarted elsewhere after a node loss shows both nodes in its ``result.json``."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id()}


def trial_storage():
    """This trial's directory in the experiment storage (its filesystem: local, or S3 with its options):
    the loop's files are published there, since this node's scratch is not the driver's."""
    from ray.train._internal.session import get_storage

    from i2m2_ray.storage import Storage

    context = get_storage()
    return Storage.on(context.storage_filesystem, context.trial_fs_path)


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
    if result is not None and session.reports == 0:
        # Restored after the last checkpoint was written (driver killed at the very end): the loop had
        # nothing left to run, but Tune needs the trial's final metrics once more.
        # Marked, so nobody mistakes it for a second training of the last epoch.
        tune.report({**result, "epoch": result["epochs_run"], "final_rereport": True, **where()})


def _train(cfg: TrainConfig, session: TuneSession) -> dict[str, Any] | None:
    from i2m2_ray.train.distributed import build_trainer, use_ray

    if use_ray(cfg):
        from ray.tune.integration.ray_train import TuneReportCallback

        # The Train run keeps its checkpoints in the trial's storage and its rank 0, on whichever node,
        # publishes the loop's files there: this trial's node may hold none of them.
        build_trainer(cfg, storage=trial_storage(), callbacks=[TuneReportCallback()]).fit()
        return None
    result = train(cfg, session=session, console=False)
    trial_storage().publish(cfg.run_dir, ARTIFACTS)  # before returning: the driver reads them when Tune says done
    return result
