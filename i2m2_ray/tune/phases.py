"""The experiment's phases: one variant's search, and the final seed runs of every winner.

Each phase is one Ray Tune run in its own directory under the experiment directory:
``search-<variant>`` (OptunaSearch with a seeded TPE sampler + ASHA), ``final`` (each stage-1
best configuration retrained with every seed, evaluated on the test split) and ``final-stage2``
(the same for intra / I2M2, seed s initialised from the seed-s ``final`` models, so a seed's
spread covers the whole stage-1 -> stage-2 chain).
A finished phase is recorded in ``state.json`` and never re-run; an unfinished one is
restored with ``Tuner.restore`` (finished trials kept, Optuna's state restored).
The experiment directory may be object storage: phases run with it as Tune's storage, read trial files
through the result's filesystem and record paths relative to the experiment root (storage.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from i2m2_ray.errors import I2M2Error
from i2m2_ray.models.builder import stage1_variants
from i2m2_ray.storage import Storage, open_storage
from i2m2_ray.train.loop import MODEL_FILE, RESULT_FILE
from i2m2_ray.tune.experiment import ExperimentConfig
from i2m2_ray.tune.service import (
    build_tuner,
    log_dir,
    make_trainable,
    metric_key,
    trial_param_space,
)
from i2m2_ray.tune.space import searched_values
from i2m2_ray.tune.state import FINAL, FINAL_STAGE2, STATE, ExperimentState, row_params, slug
from i2m2_ray.tune.stopping import fit_or_stop


class Interrupted(I2M2Error):
    """The driver was stopped mid-phase; everything finished so far is on disk."""


def run_phase(exp: ExperimentConfig, name: str, variant: str, param_space: dict[str, Any], search: bool,
              resume: bool, build: Callable[[], Any] | None = None):
    """Run one phase to the end, restoring it when an earlier driver left it unfinished.

    ``build``: makes the new Tuner instead of ``build_tuner`` (a stage's several variants at once)."""
    from ray import tune

    storage = open_storage(exp.output_dir)
    path, fs = storage.path(name), storage.tune_args()["storage_filesystem"]
    # Tune writes tuner.pkl when the Tuner is built, its experiment (and searcher) state only once the run has
    # started: a driver stopped in between left nothing to restore, and a restore would get a searcher with no
    # search space (tuner.pkl leaves the param_space out). Such a run starts again.
    saved = any(f.startswith("experiment_state") for f in storage.list(name))
    if resume and saved and tune.Tuner.can_restore(path, storage_filesystem=fs):
        print(f"  resuming {name} from {storage.location(name)}", flush=True)
        tuner = tune.Tuner.restore(path, make_trainable(exp), resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        tuner = build() if build else build_tuner(exp, name, variant, param_space, search=search)
    grid, interrupted = fit_or_stop(tuner)
    logs = log_dir(exp, name)
    if storage.remote and logs.is_dir():  # the driver's own logs, beside the run's files in the storage
        storage.upload_dir(logs, name)
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if interrupted or unfinished:
        raise Interrupted(f"{name} was stopped before all its trials finished; "
                          "re-run the same command to resume")
    return grid


def _read_final(result) -> dict[str, Any]:
    """The trial's ``final.json`` through the result's filesystem (its storage, not this node's disk)."""
    trial = Storage.on(result.filesystem, result.path)
    return trial.read_json(RESULT_FILE) if trial.is_file(RESULT_FILE) else {}


def _keep_best_weights(result) -> None:
    """``<trial>/model.pt`` in storage, from the trial's last checkpoint when the trial did not publish it.

    A trial the scheduler stops (ASHA at ``max_epochs`` or at a rung) never returns, so it never publishes its
    files; its best weights travel in every checkpoint (trainable.py), which Tune uploads with each report.
    A server-side copy on object storage; stage-2 trials and the analysis read ``model.pt``.
    """
    from i2m2_ray.train.session import BEST_IN_CHECKPOINT

    trial = Storage.on(result.filesystem, result.path)
    # a multi-worker trial's checkpoints are its Train run's, in the same storage (TuneReportCallback's key)
    path = result.checkpoint.path if result.checkpoint is not None else (result.metrics or {}).get("checkpoint_path")
    if path is None or trial.is_file(MODEL_FILE):
        return
    checkpoint = Storage.on(result.filesystem, path)
    if checkpoint.is_file(BEST_IN_CHECKPOINT):
        result.filesystem.copy_file(checkpoint.path(BEST_IN_CHECKPOINT), trial.path(MODEL_FILE))


def trial_rows(grid, key: str) -> list[dict[str, Any]]:
    """One ledger row per trial: its searched values, outcome and the loop's ``final.json``; ``trial_dir`` is
    ``<phase>/<trial>``, relative to the experiment root (Tune's storage root)."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        config = {**r.config, **r.config.get("run", {})}
        status = m.get("trial_status") or ("crashed" if r.error is not None else "ok")
        rows.append({
            "trial_dir": "/".join(Path(r.path).parts[-2:]), "variant": config["base"]["variant"],
            "params": searched_values(r.config),
            "seed": config.get("seed", config["base"]["seed"]), "status": status,
            "error": None if status == "ok" else (str(r.error).splitlines()[0] if r.error is not None else status),
            "val_best": m.get(key, float("nan")), "epochs": int(m.get("epoch", m.get("epochs_run", 0))),
            "time_s": m.get("time_total_s"), "node_id": m.get("node_id"),  # Ray node: the trial's, or rank 0's
            "nodes": (m.get("worker_nodes") or m.get("node_id") or "").split(",") if m.get("node_id") else [],
            "final": _read_final(r) if status == "ok" else {},
        })
        if status == "ok":
            _keep_best_weights(r)
    return rows


def search_variant(exp: ExperimentConfig, variant: str, init: dict[str, str], state: ExperimentState,
                   resume: bool) -> dict[str, Any]:
    """Search one variant's space; returns (and records) the phase with its best trial.

    ``init`` maps expert -> state dict relative to the experiment root (as the ledger records it); trials get
    its location in the experiment's storage."""
    name = f"search-{slug(variant)}"
    done = state.phase(name)
    if done:
        print(f"  {variant}: search already finished (best {done['best']['val_best']:.4f}), skipping", flush=True)
        return done
    t0 = time.time()
    grid = run_phase(exp, name, variant, trial_param_space(exp, variant, init_locations(exp, init)), search=True,
                     resume=resume)
    return record_search(exp, variant, init, grid, state, time.time() - t0)


def init_locations(exp: ExperimentConfig, init: dict[str, str]) -> dict[str, str]:
    """expert -> where a trial (on any node) reads its stage-1 weights: the ledger's relative paths made
    locations in the experiment storage."""
    storage = open_storage(exp.output_dir)
    return {expert: storage.location(p) for expert, p in init.items()}


def record_search(exp: ExperimentConfig, variant: str, init: dict[str, str], grid, state: ExperimentState,
                  wall_s: float) -> dict[str, Any]:
    """The ``search-<variant>`` ledger record of a variant's trials (``grid``: their Tune results)."""
    name = f"search-{slug(variant)}"
    trials = trial_rows(grid, metric_key(exp))
    ok = [t for t in trials if t["error"] is None and not math.isnan(t["val_best"])]
    if not ok:
        raise I2M2Error(f"{name}: every trial failed (first: {trials[0]['error'] if trials else 'no trials'})")
    sign = 1 if exp.mode == "max" else -1
    best = max(ok, key=lambda t: sign * t["val_best"])
    payload = {"variant": variant, "best": best, "trials": trials, "wall_s": wall_s,
               "init": init, "model_path": f"{best['trial_dir']}/{MODEL_FILE}"}
    state.record(name, payload)
    return payload


def _final_phase(exp: ExperimentConfig, name: str, what: str, runs: list[dict[str, Any]], state: ExperimentState,
                 resume: bool, **extra: Any) -> dict[str, Any] | None:
    """Retrain the given (variant, seed) runs in one Tune run (one start-up cost); ``None`` when there are none.

    Each run carries the best trial's value of every searched path; its test metrics come from the
    ``final.json`` its training loop writes.
    """
    from ray import tune

    done = state.phase(name)
    if done:
        print(f"  {what} already finished, skipping", flush=True)
        return done
    if not runs:
        return None
    t0 = time.time()
    grid = run_phase(exp, name, "final", {"run": tune.grid_search(runs)}, search=False, resume=resume)
    rows = trial_rows(grid, metric_key(exp))
    failed = [r for r in rows if r["error"] is not None or not r["final"]]
    if failed:
        raise I2M2Error(f"{name}: {len(failed)} final run(s) failed ({failed[0]['error']})")
    payload = {"runs": rows, "wall_s": time.time() - t0, **extra}
    state.record(name, payload)
    return payload


def _runs(exp: ExperimentConfig, variants: list[str], best: dict[str, dict[str, Any]],
          init: Callable[[str, int], dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """One grid entry per (variant, seed); ``init(variant, seed)`` gives the run's init mapping."""
    return [{"variant": v, "base": exp.trial_base(v, init(v, seed) if init else {}),
             **row_params(best[v]["best"]), "seed": seed}
            for v in variants for seed in exp.final.seeds]


def final_stage1(exp: ExperimentConfig, best: dict[str, dict[str, Any]], state: ExperimentState,
                 resume: bool) -> dict[str, Any] | None:
    """The ``final`` phase: every stage-1 winner (unimodal, inter) once per seed."""
    return _final_phase(exp, FINAL, "final runs", _runs(exp, exp.stage1_variants(), best), state, resume)


def _relative(path: str, root: Path | None) -> str:
    """``path`` relative to a local experiment directory when it lies inside it (experiments move; the ledger
    should not pin them), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(root)) if root and Path(path).is_absolute() else path
    except ValueError:
        return path


def stage2_final_inits(exp: ExperimentConfig, modalities: list[str], search_inits: dict[str, dict[str, str]],
                       stage1_runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, str]]]:
    """variant -> str(seed) -> expert -> state dict, relative to the experiment root (``search_inits`` too).

    Default: seed s's experts come from the ``model.pt`` of the stage-1 final runs of seed s.
    ``final.shared_init``: every seed from the best search trials (``search_inits``, as stage-2 searched).
    ``stage2.from_scratch``: nothing.
    """
    storage = open_storage(exp.output_dir)
    root = Path(storage.root) if not storage.remote else None
    by_seed = {(r["variant"], r["seed"]): Path(r["trial_dir"]).name for r in stage1_runs}
    out: dict[str, dict[str, dict[str, str]]] = {}
    for v in exp.stage2_variants():
        out[v] = {}
        for seed in exp.final.seeds:
            if exp.stage2.from_scratch:
                init = {}
            elif exp.final.shared_init:
                init = {e: _relative(p, root) for e, p in search_inits[v].items()}
            else:
                init = {}
                for expert, src in stage1_variants(v, modalities).items():
                    if (src, seed) not in by_seed:
                        ledger = storage.location(STATE)
                        raise I2M2Error(f"{FINAL_STAGE2}: {v} seed {seed} needs the {FINAL} run of {src} "
                                        f"with seed {seed}, which {ledger} does not list")
                    init[expert] = f"{FINAL}/{by_seed[(src, seed)]}/{MODEL_FILE}"
            out[v][str(seed)] = init
    return out


def final_stage2(exp: ExperimentConfig, best: dict[str, dict[str, Any]], modalities: list[str],
                 search_inits: dict[str, dict[str, str]], state: ExperimentState,
                 resume: bool) -> dict[str, Any] | None:
    """The ``final-stage2`` phase: every intra / I2M2 winner once per seed, after ``final``.

    An experiment an earlier version finished holds its stage-2 final runs in ``final`` (every seed
    from the best search trials): those are kept, not re-run.
    """
    stage2 = exp.stage2_variants()
    first = state.phase(FINAL)
    if first and state.phase(FINAL_STAGE2) is None and any(r["variant"] in stage2 for r in first["runs"]):
        print(f"  final runs of {', '.join(stage2)} already finished (an earlier version: every seed from the "
              "best search trials), kept", flush=True)
        return None
    if not stage2:
        return None
    inits = stage2_final_inits(exp, modalities, search_inits, first["runs"] if first else [])
    storage = open_storage(exp.output_dir)

    def absolute(variant: str, seed: int) -> dict[str, str]:
        return {e: storage.location(p) for e, p in inits[variant][str(seed)].items()}

    how = ("scratch" if exp.stage2.from_scratch else "best search trials" if exp.final.shared_init
           else "stage-1 final runs of the same seed")
    return _final_phase(exp, FINAL_STAGE2, "final stage-2 runs", _runs(exp, stage2, best, absolute), state,
                        resume, init=inits, init_from=how)
