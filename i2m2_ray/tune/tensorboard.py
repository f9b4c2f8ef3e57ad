"""Tune's TensorBoard logger with flat HParams: the values a trial actually trained with.

Tune's own logger records ``trial.evaluated_params``; for final runs (a grid over whole
run settings) that is ``run/lr``, ``run/base/optim/lr`` (a default, not the value used)
and fifty other constants, so the HParams tab cannot line search and final runs up.
Here every trial records the same few keys: the searched values, the seed and the variant
(the searched paths come from the experiment's ``search``, see space.py).
"""

from __future__ import annotations

from typing import Any

from ray.tune.logger import TBXLoggerCallback

from i2m2_ray.tune.space import column_name, searched_values


def trial_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """variant, seed and every searched path (``lr`` / ``weight_decay`` for the optimiser's two)."""
    merged = {**config, **config.get("run", {})}
    base = merged.get("base", {})
    out: dict[str, Any] = {"variant": base.get("variant", merged.get("variant")),
                           "seed": merged.get("seed", base.get("seed"))}
    out.update({column_name(path): value for path, value in searched_values(config).items()})
    return {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool))}


class FlatHParamsTBXLogger(TBXLoggerCallback):
    def _try_log_hparams(self, trial, result: dict) -> None:
        from tensorboardX.summary import hparams

        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        experiment_tag, start_tag, end_tag = hparams(hparam_dict=trial_hparams(trial.config), metric_dict=metrics)
        writer = self._trial_writer[trial].file_writer
        for tag in (experiment_tag, start_tag, end_tag):
            writer.add_summary(tag)
