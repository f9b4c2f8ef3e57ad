"""The experiment's phases: one variant's search, and the final seed runs of every winner.

Each phase is one Ray Tune run in its own directory under the experiment directory:
``search-<variant>`` (OptunaSearch with a seeded TPE sampler + ASHA) and ``final``
(each best configuration retrained with every seed, evaluated on the test split).
A finished phase is recorded in ``state.json`` and never re-run; an unfinished one is
restored with ``Tuner.restore`` (finished trials kept, Optuna's state restored).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

from i2m2_ray.errors import I2M2Error
from i2m2_ray.train.loop import MODEL_FILE, RESULT_FILE
from i2m2_ray.tune.experiment import ExperimentConfig
from i2m2_ray.tune.service import (
    build_tuner,
    make_trainable,
    metric_key,
    trial_param_space,
)
from i2m2_ray.tune.space import searched_values
from i2m2_ray.tune.state import ExperimentState, read_json, row_params, slug


class Interrupted(I2M2Error):
    """The driver was stopped mid-phase; everything finished so far is on disk."""


def _interrupt_handler(sig: int, frame) -> None:
    raise KeyboardInterrupt


def _fit(tuner):
    """``tuner.fit()`` that tells whether it ended because of SIGINT.

    Tune's own handler takes over SIGINT during fit and, when it fires, stops the run gracefully
    and puts back the handler it found. So: install ours first; if ours is back afterwards,
    the run was interrupted (Tune's trial statuses alone do not say so reliably).
    """
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), False
    signal.signal(signal.SIGINT, _interrupt_handler)
    try:
        grid = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is _interrupt_handler
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return grid, interrupted


def run_phase(exp: ExperimentConfig, name: str, variant: str, param_space: dict[str, Any], search: bool,
              resume: bool):
    """Run one phase to the end, restoring it when an earlier driver left it unfinished."""
    from ray import tune

    path = Path(exp.output_dir).resolve() / name
    if resume and tune.Tuner.can_restore(str(path)):
        print(f"  resuming {name} from {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), make_trainable(exp), resume_unfinished=True, resume_errored=True)
    else:
        tuner = build_tuner(exp, name, variant, param_space, search=search)
    grid, interrupted = _fit(tuner)
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if interrupted or unfinished:
        raise Interrupted(f"{name} was stopped before all its trials finished; "
                          "re-run the same command to resume")
    return grid


def trial_rows(grid, key: str) -> list[dict[str, Any]]:
    """One ledger row per trial: its searched values, outcome and the loop's ``final.json``."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        config = {**r.config, **r.config.get("run", {})}
        result_file = Path(r.path) / RESULT_FILE
        status = m.get("trial_status") or ("crashed" if r.error is not None else "ok")
        rows.append({
            "trial_dir": r.path, "variant": config["base"]["variant"], "params": searched_values(r.config),
            "seed": config.get("seed", config["base"]["seed"]), "status": status,
            "error": None if status == "ok" else (str(r.error).splitlines()[0] if r.error is not None else status),
            "val_best": m.get(key, float("nan")), "epochs": int(m.get("epoch", m.get("epochs_run", 0))),
            "time_s": m.get("time_total_s"),
            "final": read_json(result_file) if status == "ok" and result_file.is_file() else {},
        })
    return rows


def search_variant(exp: ExperimentConfig, variant: str, init: dict[str, str], state: ExperimentState,
                   resume: bool) -> dict[str, Any]:
    """Search one variant's space; returns (and records) the phase with its best trial."""
    name = f"search-{slug(variant)}"
    done = state.phase(name)
    if done:
        print(f"  {variant}: search already finished (best {done['best']['val_best']:.4f}), skipping", flush=True)
        return done
    t0 = time.time()
    grid = run_phase(exp, name, variant, trial_param_space(exp, variant, init), search=True, resume=resume)
    trials = trial_rows(grid, metric_key(exp))
    ok = [t for t in trials if t["error"] is None and not math.isnan(t["val_best"])]
    if not ok:
        raise I2M2Error(f"{name}: every trial failed (first: {trials[0]['error'] if trials else 'no trials'})")
    sign = 1 if exp.mode == "max" else -1
    best = max(ok, key=lambda t: sign * t["val_best"])
    payload = {"variant": variant, "best": best, "trials": trials, "wall_s": time.time() - t0,
               "init": init, "model_path": str(Path(best["trial_dir"]) / MODEL_FILE)}
    state.record(name, payload)
    return payload


def final_runs(exp: ExperimentConfig, best: dict[str, dict[str, Any]], inits: dict[str, dict[str, str]],
               state: ExperimentState, resume: bool) -> dict[str, Any]:
    """Retrain every variant's best configuration once per seed, all in one Tune run (one start-up cost).

    Each run carries the best trial's value of every searched path; its test metrics come from the
    ``final.json`` its training loop writes.
    """
    from ray import tune

    name = "final"
    done = state.phase(name)
    if done:
        print("  final runs already finished, skipping", flush=True)
        return done
    runs = [{"variant": variant, "base": exp.trial_base(variant, inits[variant]),
             **row_params(best[variant]["best"]), "seed": seed}
            for variant in exp.variants for seed in exp.final.seeds]
    t0 = time.time()
    grid = run_phase(exp, name, "final", {"run": tune.grid_search(runs)}, search=False, resume=resume)
    rows = trial_rows(grid, metric_key(exp))
    failed = [r for r in rows if r["error"] is not None or not r["final"]]
    if failed:
        raise I2M2Error(f"{name}: {len(failed)} final run(s) failed ({failed[0]['error']})")
    payload = {"runs": rows, "wall_s": time.time() - t0}
    state.record(name, payload)
    return payload
