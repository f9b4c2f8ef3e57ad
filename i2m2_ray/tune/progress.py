"""One line per finished trial, instead of Tune's progress tables: variant, searched values, metric, epochs."""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback

from i2m2_ray.tune.space import column_name, searched_values

# Trial-line labels of the two default paths (the lines every earlier version printed).
LABELS = {"optim.lr": "lr", "optim.weight_decay": "wd"}
NODE_CHARS = 8  # a Ray node id is 56 hex characters; its first 8 tell a cluster's nodes apart


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def trial_status(result: dict[str, Any]) -> str | None:
    """``diverged`` / ``error: <line>`` for a trial that ended on a user error (see trainable.run_trial)."""
    return result.get("trial_status")


class TrialPrinter(Callback):
    def __init__(self, variant: str, key: str) -> None:
        self.variant, self.key = variant, key

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, trial_status(trial.last_result or {}) or "done")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, "ERROR")

    def _line(self, trial, status: str) -> None:
        r, config = trial.last_result or {}, trial.config
        run = config.get("run", {})
        name = run.get("variant") or config.get("base", {}).get("variant", self.variant)  # a stage: many
        values = "  ".join(f"{LABELS.get(p, column_name(p))} {format_value(v)}"
                           for p, v in searched_values(config).items())
        seed = f" seed {run['seed']}" if "seed" in run else ""
        nodes = sorted({n[:NODE_CHARS] for n in (r.get("worker_nodes") or r.get("node_id") or "").split(",") if n})
        node = f"  node {','.join(nodes)}" if nodes else ""
        print(f"  [{name}] trial {trial.trial_id} {status}: {values}{seed}  {self.key} "
              f"{r.get(self.key, float('nan')):.4f}  epochs {r.get('epoch', r.get('epochs_run', 0))}{node}", flush=True)
