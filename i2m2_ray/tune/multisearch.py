"""Several variants' searches in one Tune run: one Optuna study and one ASHA per variant.

A stage's variants are independent searches. Running each as its own Tune run leaves the cluster
idle whenever a variant has fewer trials than there are slots; one Tune run per stage fills the
slots with every variant's trials. The searches stay separate: ``MultiSearch`` routes every
suggestion and result to the variant's own ``OptunaSearch`` (its own seeded sampler, so a variant's
sequence of suggestions does not depend on the others), and ``VariantASHA`` gives every variant its
own ``ASHAScheduler``, so early stopping never compares trials of different variants.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

# Per-stage logs in the stage's Tune directory, for people (and the concurrency test and bench).
TIMELINE, DECISIONS = "timeline.jsonl", "asha_decisions.jsonl"


def trial_variant(config: dict[str, Any]) -> str:
    """The variant a trial belongs to (search trials carry it in their base config)."""
    return config.get("run", {}).get("variant") or config["base"]["variant"]


def _append(path: Path | None, row: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


class MultiSearch(Searcher):
    """One ``OptunaSearch`` per variant, each handing out ``trials`` configs of its variant.

    ``spaces``: variant -> ``{"base": resolved config, "<path>": Tune domain, ...}`` (what a
    single-variant Tuner takes as ``param_space``); ``searchers``: variant -> an OptunaSearch
    built without a space (it gets its variant's space here). Suggestions go to the variants in
    turn, so every variant has trials running from the start of the stage.
    """

    def __init__(self, spaces: dict[str, dict[str, Any]], searchers: dict[str, OptunaSearch], trials: int,
                 metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.order = list(spaces)
        self.bases = {v: space["base"] for v, space in spaces.items()}
        self.searchers = searchers
        for v, space in spaces.items():
            domains = {k: d for k, d in space.items() if k != "base"}
            searchers[v].set_search_properties(metric, mode, domains)
        self.trials = trials
        self.handed = {v: 0 for v in self.order}
        self.owner: dict[str, str] = {}  # trial id -> variant
        self.turn = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return not config  # metric and mode were given at construction; the spaces too

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self.owner:
            variant = self.owner[trial_id]
            return {"base": self.bases[variant], **self.searchers[variant].suggest(trial_id)}
        open_ = [v for v in self.order if self.handed[v] < self.trials]
        if not open_:
            return Searcher.FINISHED
        variant = open_[self.turn % len(open_)]
        self.turn += 1
        self.handed[variant] += 1
        self.owner[trial_id] = variant
        return {"base": self.bases[variant], **self.searchers[variant].suggest(trial_id)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class VariantASHA(FIFOScheduler):
    """One ``ASHAScheduler`` per variant; a trial's results only ever meet its own variant's rungs.

    Every decision (trial, variant, epoch, the trials of the rung it was compared with, the action)
    is appended to ``decisions`` when a path is given, so a stop can be explained afterwards.
    """

    def __init__(self, variants: list[str], decisions: Path | None = None, **asha: Any) -> None:
        super().__init__()
        self.ashas = {v: ASHAScheduler(**asha) for v in variants}
        self.time_attr = asha.get("time_attr", "epoch")
        self.decisions = decisions

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        ok = all(a.set_search_properties(metric, mode, **spec) for a in self.ashas.values())
        return ok and super().set_search_properties(metric, mode, **spec)

    def _asha(self, trial) -> ASHAScheduler:
        return self.ashas[trial_variant(trial.config)]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        asha = self._asha(trial)
        compared = _rung_members(asha, trial, result.get(self.time_attr))
        action = asha.on_trial_result(tune_controller, trial, result)
        if compared is not None:
            _append(self.decisions, {"trial": trial.trial_id, "variant": trial_variant(trial.config),
                                     "epoch": result.get(self.time_attr), "compared": compared, "action": action})
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{v}: {a.debug_string()}" for v, a in self.ashas.items())


def _rung_members(asha: ASHAScheduler, trial, epoch: Any) -> list[str] | None:
    """The trial ids of the rung this result is about to be compared with (None: no rung reached)."""
    bracket = asha._trial_info.get(trial.trial_id)
    if bracket is None or epoch is None or (epoch >= asha._max_t and asha._stop_last_trials):
        return None  # not in a rung, or at the end: stopped without a comparison
    for milestone, recorded in bracket._rungs:
        if epoch >= milestone and trial.trial_id not in recorded:
            return sorted(recorded)
        if epoch >= milestone:
            return None
    return None


class Timeline(Callback):
    """When each trial started and ended (driver clock), one line per event, for the stage's concurrency."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._event(trial, "start")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._event(trial, "end")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._event(trial, "end")

    def _event(self, trial, event: str) -> None:
        _append(self.path, {"trial": trial.trial_id, "variant": trial_variant(trial.config), "event": event,
                            "time": time.time()})


def read_timeline(path: Path) -> dict[str, dict[str, Any]]:
    """trial id -> {"variant", "start", "end"} from a stage's timeline (the last start of a restored trial)."""
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        entry = out.setdefault(row["trial"], {"variant": row["variant"]})
        entry[row["event"]] = row["time"]
    return out


def peak_concurrency(spans: list[tuple[float, float]]) -> int:
    """Most intervals open at one time."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak
