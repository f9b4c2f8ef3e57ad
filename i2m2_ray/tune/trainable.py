"""The Tune trial: the training loop, run in-process inside the trial, reporting to Tune.

A single-worker trial runs ``i2m2_ray.train.loop.train`` directly (about 1.5 s of trial
overhead instead of 12-15 s for a Train worker group); the session below turns the
loop's per-epoch reports into ``ray.tune.report`` calls with a checkpoint attached.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from i2m2_ray.config import from_dict
from i2m2_ray.train.config import TrainConfig
from i2m2_ray.train.loop import train
from i2m2_ray.train.session import STATE_FILE, Session, load_state_file, save_state

# Trial config keys that are searched (and shown in TensorBoard's HParams tab); everything else
# reaches the loop through "base", the experiment's resolved TrainConfig.
SEARCHED = ("lr", "weight_decay", "optimizer", "batch_size", "seed")


class TuneSession(Session):
    """Reports each epoch to Tune and resumes from the trial's last checkpoint after a restore."""

    def __init__(self) -> None:
        self.reports = 0

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        from ray import tune

        self.reports += 1
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="i2m2-ckpt-") as tmp:
            save_state(state, Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def load_state(self) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as path:
            return load_state_file(Path(path) / STATE_FILE, shown=f"{checkpoint.path}/{STATE_FILE}")


def trial_config(config: dict[str, Any], trial_dir: str) -> TrainConfig:
    """Searched values on top of the experiment's base config; the trial directory is the run dir.

    Final runs carry their whole setting in ``config["run"]`` (a grid over variants x seeds).
    """
    config = {**config, **config.get("run", {})}
    base = dict(config["base"])
    optim = dict(base.get("optim", {}))
    for key, target in (("lr", "lr"), ("weight_decay", "weight_decay"), ("optimizer", "name"),
                        ("batch_size", "batch_size")):
        if key in config:
            optim[target] = config[key]
    base["optim"] = optim
    if "seed" in config:
        base["seed"] = config["seed"]
    base["run_dir"] = trial_dir
    return from_dict(TrainConfig, base)


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable (module level, so it pickles).

    One worker: the loop runs here, in the trial's process. More: the trial drives a TorchTrainer
    whose run lives in the trial directory (a stable name, so a restored trial resumes it) and
    whose rank-0 reports reach Tune through ``TuneReportCallback``.
    """
    from ray import tune

    cfg = trial_config(config, tune.get_context().get_trial_dir())
    from i2m2_ray.train.distributed import build_trainer, use_ray

    if use_ray(cfg):
        from ray.tune.integration.ray_train import TuneReportCallback

        build_trainer(cfg, callbacks=[TuneReportCallback()]).fit()
        return
    session = TuneSession()
    result = train(cfg, session=session, console=False)
    if session.reports == 0:
        # Restored after the last checkpoint was written (driver killed at the very end): the loop had
        # nothing left to run, but Tune needs the trial's final metrics once more.
        # Marked, so nobody mistakes it for a second training of the last epoch.
        tune.report({**result, "epoch": result["epochs_run"], "final_rereport": True})
