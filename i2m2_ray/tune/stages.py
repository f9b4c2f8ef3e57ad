"""A stage's searches side by side: every unfinished variant of the stage in one Tune run.

The stage's Tune run is ``search-stage1`` / ``search-stage2`` under the experiment directory; when
it ends, each variant still gets its own ``search-<variant>`` ledger record, as when variants ran
one after another, so the table, the report and later phases read the same thing. An interrupted
stage restores with ``Tuner.restore`` (finished trials kept, every variant's Optuna state restored).
A stage with a single variant left to search runs it as before, in its own ``search-<variant>`` run.
Experiments an earlier version started keep what they have: finished variants are skipped, and a
variant whose own Tune run was left unfinished resumes it, alone, before the stage runs the rest.
"""

from __future__ import annotations

import time
from typing import Any

from i2m2_ray.storage import open_storage
from i2m2_ray.tune.experiment import ExperimentConfig
from i2m2_ray.tune.multisearch import trial_variant
from i2m2_ray.tune.phases import init_locations, record_search, run_phase, search_variant
from i2m2_ray.tune.service import build_stage_tuner, trial_param_space
from i2m2_ray.tune.state import ExperimentState, slug


def stage_name(stage: int) -> str:
    return f"search-stage{stage}"


def _earlier_run(exp: ExperimentConfig, variant: str) -> bool:
    """Whether an earlier version left this variant's own search unfinished (it resumes that run)."""
    from ray import tune

    storage = open_storage(exp.output_dir)
    return tune.Tuner.can_restore(storage.path(f"search-{slug(variant)}"),
                                  storage_filesystem=storage.tune_args()["storage_filesystem"])


def search_stage(exp: ExperimentConfig, stage: int, inits: dict[str, dict[str, str]], state: ExperimentState,
                 resume: bool) -> dict[str, dict[str, Any]]:
    """Search every variant of ``inits`` (variant -> its init mapping) at once; returns variant -> record."""
    out: dict[str, dict[str, Any]] = {}
    todo: dict[str, dict[str, str]] = {}
    for variant, init in inits.items():
        done = state.phase(f"search-{slug(variant)}")
        if done:
            print(f"  {variant}: search already finished (best {done['best']['val_best']:.4f}), skipping",
                  flush=True)
            out[variant] = done
        elif resume and _earlier_run(exp, variant):
            out[variant] = search_variant(exp, variant, init, state, resume)
        else:
            todo[variant] = init
    if len(todo) == 1:  # nothing to run beside it: its own run, as it always was
        (variant, init), = todo.items()
        out[variant] = search_variant(exp, variant, init, state, resume)
        todo = {}
    if not todo:
        return {v: out[v] for v in inits}
    name = stage_name(stage)
    spaces = {v: trial_param_space(exp, v, init_locations(exp, init)) for v, init in todo.items()}
    t0 = time.time()
    grid = run_phase(exp, name, "search", {}, search=True, resume=resume,
                     build=lambda: build_stage_tuner(exp, name, spaces))
    wall = time.time() - t0
    results = {v: [r for r in grid if trial_variant(r.config) == v] for v in todo}
    busy = {v: sum((r.metrics or {}).get("time_total_s") or 0.0 for r in rs) for v, rs in results.items()}
    for variant, init in todo.items():
        # The stage's wall time shared by trial time, so a column of wall_s still adds up to the run's time.
        share = busy[variant] / sum(busy.values()) if sum(busy.values()) > 0 else 1 / len(todo)
        payload = record_search(exp, variant, init, results[variant], state, wall * share)
        out[variant] = {**payload, "stage": name, "stage_wall_s": wall}
        state.record(f"search-{slug(variant)}", out[variant])
    return {v: out[v] for v in inits}
