"""Tune's TensorBoard logger with flat HParams: the values a trial actually trained with.

Tune's own logger records ``trial.evaluated_params``; for final runs (a grid over whole
run settings) that is ``run/lr``, ``run/base/optim/lr`` (a default, not the value used)
and fifty other constants, so the HParams tab cannot line search and final runs up.
Here every trial records the same few keys: the searched values, the seed and the variant.
"""

from __future__ import annotations

from typing import Any

from ray.tune.logger import TBXLoggerCallback

from i2m2_ray.tune.trainable import SEARCHED


def trial_hparams(config: dict[str, Any]) -> dict[str, Any]:
    merged = {**config, **config.get("run", {})}
    base = merged.get("base", {})
    out: dict[str, Any] = {"variant": base.get("variant", merged.get("variant"))}
    out.update({k: merged[k] for k in SEARCHED if k in merged})
    out.setdefault("seed", base.get("seed"))
    return {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool))}


class FlatHParamsTBXLogger(TBXLoggerCallback):
    def _try_log_hparams(self, trial, result: dict) -> None:
        from tensorboardX.summary import hparams

        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        experiment_tag, start_tag, end_tag = hparams(hparam_dict=trial_hparams(trial.config), metric_dict=metrics)
        writer = self._trial_writer[trial].file_writer
        for tag in (experiment_tag, start_tag, end_tag):
            writer.add_summary(tag)
