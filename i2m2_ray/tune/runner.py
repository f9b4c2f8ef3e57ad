"""The search service: stage 1 (unimodal, inter), stage 2 (intra, I2M2 from stage-1 weights), final seeds.

Each phase is one Ray Tune run in its own directory under the experiment directory:
``search-<variant>`` (OptunaSearch with a seeded TPE sampler + ASHA) and ``final-<variant>``
(the best configuration retrained with every seed, evaluated on the test split).
A finished phase is recorded in ``state.json`` and never re-run; an unfinished one is
restored with ``Tuner.restore`` (finished trials kept, Optuna's state restored).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from i2m2_ray.config import load_yaml, save_yaml, to_dict
from i2m2_ray.data.dataset import resolve_dataset
from i2m2_ray.data.format import load_manifest
from i2m2_ray.errors import ConfigError, I2M2Error
from i2m2_ray.fsutil import dir_lock
from i2m2_ray.models.builder import model_modalities, stage1_variants
from i2m2_ray.train.loop import MODEL_FILE, RESULT_FILE
from i2m2_ray.tune.experiment import ExperimentConfig, check_variants
from i2m2_ray.tune.state import ExperimentState, slug

EXPERIMENT_FILE = "experiment.yaml"


class Interrupted(I2M2Error):
    """The driver was stopped mid-phase; everything finished so far is on disk."""


def metric_key(exp: ExperimentConfig) -> str:
    return f"val/{exp.metric}_best"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def init_ray(num_cpus: int | None = None) -> None:
    """The shared cluster set-up, with Tune's own output replaced by our progress lines."""
    import logging

    import optuna

    from i2m2_ray import cluster

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # our loggers instead (see tensorboard.py)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cluster.init_ray(num_cpus, log_to_driver=False)


class TrialPrinter:
    """A line per finished trial: variant, lr, wd, metric, epochs."""

    def __new__(cls, variant: str, key: str):
        from ray.tune import Callback

        class _Printer(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                self._line(trial, "done")

            def on_trial_error(self, iteration, trials, trial, **info):
                self._line(trial, "ERROR")

            def _line(self, trial, status):
                r, c = trial.last_result or {}, {**trial.config, **trial.config.get("run", {})}
                name = c.get("variant", variant)
                seed = f" seed {c['seed']}" if "seed" in c else ""
                print(f"  [{name}] trial {trial.trial_id} {status}: lr {c.get('lr', float('nan')):.3g}  "
                      f"wd {c.get('weight_decay', float('nan')):.3g}{seed}  {key} {r.get(key, float('nan')):.4f}  "
                      f"epochs {r.get('epoch', 0)}", flush=True)

        return _Printer()


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default embeds the whole config, base included)."""
    return f"trial_{trial.trial_id}"


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


def _sampler(exp: ExperimentConfig, variant: str):
    """Seeded TPE that starts modelling after a third of the budget (Optuna's default waits for 10
    random trials, which would make every small search a random search)."""
    import optuna

    return optuna.samplers.TPESampler(seed=exp.seed + sum(map(ord, variant)), multivariate=True,
                                      n_startup_trials=max(2, min(10, exp.budget.trials // 3)))


def _concurrency(exp: ExperimentConfig) -> int:
    import ray

    if exp.budget.concurrency:
        return exp.budget.concurrency
    r = exp.resources
    cpus = ray.cluster_resources().get("CPU", 1.0)
    per_trial = r.cpus_per_trial * r.workers if r.workers > 1 else r.cpus_per_trial
    return max(1, int(cpus // per_trial))


def _trainable(exp: ExperimentConfig):
    """In-process trials hold their CPUs (and GPU); a multi-worker trial only drives its
    TorchTrainer, so it holds a sliver of a CPU and the workers hold the rest (RAY.md: a whole
    CPU for the driver plus the workers never places on a small machine)."""
    from ray import tune

    from i2m2_ray.tune.trainable import run_trial

    r = exp.resources
    if r.workers > 1:
        return tune.with_resources(run_trial, {"cpu": 0.01})
    return tune.with_resources(run_trial, {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_worker})


def _base(exp: ExperimentConfig, variant: str, init: dict[str, str]) -> dict[str, Any]:
    r = exp.resources
    threads = max(1, int(r.cpus_per_trial))
    return to_dict(exp.base_train_config(variant=variant, init=init, threads=threads, workers=r.workers,
                                         cpus_per_worker=r.cpus_per_trial, gpus_per_worker=r.gpus_per_worker,
                                         gpu="auto" if r.gpus_per_worker > 0 else "false"))


def _run_phase(exp: ExperimentConfig, name: str, variant: str, param_space: dict[str, Any], search: bool,
               resume: bool):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from i2m2_ray.tune.tensorboard import FlatHParamsTBXLogger

    exp_dir = Path(exp.output_dir).resolve()
    trainable = _trainable(exp)
    key = metric_key(exp)
    path = exp_dir / name
    if resume and tune.Tuner.can_restore(str(path)):
        print(f"  resuming {name} from {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        b = exp.budget
        tune_config = tune.TuneConfig(
            metric=key, mode=exp.mode, max_concurrent_trials=_concurrency(exp),
            trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname,
            num_samples=b.trials if search else 1,
            search_alg=OptunaSearch(sampler=_sampler(exp, variant)) if search else None,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=b.max_epochs, grace_period=b.grace_period,
                                    reduction_factor=b.reduction_factor) if search else None)
        run_config = tune.RunConfig(
            name=name, storage_path=str(exp_dir), verbose=0,
            callbacks=[TrialPrinter(variant, key), CSVLoggerCallback(), JsonLoggerCallback(),
                       FlatHParamsTBXLogger()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=1))
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    grid, interrupted = _fit(tuner)
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if interrupted or unfinished:
        raise Interrupted(f"{name} was stopped before all its trials finished; "
                          "re-run the same command to resume")
    return grid


def _trial_rows(grid, key: str) -> list[dict[str, Any]]:
    rows = []
    for r in grid:
        m = r.metrics or {}
        config = {**r.config, **r.config.get("run", {})}
        result_file = Path(r.path) / RESULT_FILE
        final = json.loads(result_file.read_text()) if result_file.is_file() else {}
        rows.append({
            "trial_dir": r.path, "variant": config["base"]["variant"], "lr": config.get("lr"),
            "weight_decay": config.get("weight_decay"), "optimizer": config.get("optimizer"),
            "batch_size": config.get("batch_size"), "seed": config.get("seed", config["base"]["seed"]),
            "error": None if r.error is None else str(r.error),
            "val_best": m.get(key, float("nan")), "epochs": int(m.get("epoch", 0)),
            "time_s": m.get("time_total_s"), "final": final,
        })
    return rows


def search_variant(exp: ExperimentConfig, variant: str, init: dict[str, str], state: ExperimentState,
                   resume: bool) -> dict[str, Any]:
    """Search lr / wd (and optional choices) for one variant; returns the best trial."""
    from ray import tune

    name = f"search-{slug(variant)}"
    done = state.phase(name)
    if done:
        print(f"  {variant}: search already finished (best {done['best']['val_best']:.4f}), skipping", flush=True)
        return done
    space = exp.space_for(variant)
    param_space: dict[str, Any] = {"base": _base(exp, variant, init),
                                   "lr": tune.loguniform(*space.lr),
                                   "weight_decay": tune.loguniform(*space.weight_decay)}
    if space.optimizer:
        param_space["optimizer"] = tune.choice(space.optimizer)
    if space.batch_size:
        param_space["batch_size"] = tune.choice(space.batch_size)
    t0 = time.time()
    grid = _run_phase(exp, name, variant, param_space, search=True, resume=resume)
    trials = _trial_rows(grid, metric_key(exp))
    ok = [t for t in trials if t["error"] is None and not math.isnan(t["val_best"])]
    if not ok:
        raise I2M2Error(f"{name}: every trial failed (first error: {trials[0]['error'] if trials else 'none'})")
    sign = 1 if exp.mode == "max" else -1
    best = max(ok, key=lambda t: sign * t["val_best"])
    payload = {"variant": variant, "best": best, "trials": trials, "wall_s": time.time() - t0,
               "init": init, "model_path": str(Path(best["trial_dir"]) / MODEL_FILE)}
    state.record(name, payload)
    return payload


def final_runs(exp: ExperimentConfig, best: dict[str, dict[str, Any]], inits: dict[str, dict[str, str]],
               state: ExperimentState, resume: bool) -> dict[str, Any]:
    """Retrain every variant's best configuration once per seed, all in one Tune run (one start-up cost).

    Each run's test metrics come from the ``final.json`` its training loop writes.
    """
    from ray import tune

    name = "final"
    done = state.phase(name)
    if done:
        print("  final runs already finished, skipping", flush=True)
        return done
    runs = []
    for variant in exp.variants:
        found = best[variant]["best"]
        for seed in exp.final.seeds:
            run = {"variant": variant, "base": _base(exp, variant, inits[variant]), "lr": found["lr"],
                   "weight_decay": found["weight_decay"], "seed": seed}
            run.update({k: found[k] for k in ("optimizer", "batch_size") if found.get(k) is not None})
            runs.append(run)
    t0 = time.time()
    grid = _run_phase(exp, name, "final", {"run": tune.grid_search(runs)}, search=False, resume=resume)
    rows = _trial_rows(grid, metric_key(exp))
    failed = [r for r in rows if r["error"] is not None or not r["final"]]
    if failed:
        raise I2M2Error(f"{name}: {len(failed)} final run(s) failed ({failed[0]['error']})")
    payload = {"runs": rows, "wall_s": time.time() - t0}
    state.record(name, payload)
    return payload


def _check_same_experiment(exp: ExperimentConfig, exp_dir: Path) -> None:
    saved_path = exp_dir / EXPERIMENT_FILE
    if not saved_path.is_file():
        return
    saved, now = load_yaml(saved_path), to_dict(exp)
    for key in now:
        if key != "output_dir" and saved.get(key) != now[key]:
            raise ConfigError(f"{exp_dir}: holds an experiment with a different '{key}'; "
                              "use a new output_dir (finished trials there are kept)")


def experiment_lock(exp_dir: Path):
    """One driver per experiment directory: a second would restore the same phase and race on its checkpoints."""
    return dir_lock(exp_dir, what="run of this experiment")


def run_experiment(exp: ExperimentConfig, resume: bool = True, num_cpus: int | None = None):
    """Run (or resume) every phase, then write and return the results table."""
    started = time.time()
    exp_dir = Path(exp.output_dir).resolve()
    root = resolve_dataset(exp.dataset)
    manifest = load_manifest(root)
    modalities = model_modalities(manifest, exp.base_train_config().model)
    check_variants(exp, modalities)
    exp_dir.mkdir(parents=True, exist_ok=True)
    with experiment_lock(exp_dir):
        if not resume and (exp_dir / "state.json").exists():
            raise ConfigError(f"{exp_dir}: an experiment exists there and --no-resume was given; use a new output_dir")
        _check_same_experiment(exp, exp_dir)
        return _run_locked(exp, exp_dir, root, modalities, num_cpus, resume, started)


def _run_locked(exp: ExperimentConfig, exp_dir: Path, root: Path, modalities: list[str], num_cpus: int | None,
                resume: bool, started: float):
    from i2m2_ray.tune.results import render_markdown, results_table, save_table

    manifest = load_manifest(root)
    save_yaml(to_dict(exp), exp_dir / EXPERIMENT_FILE)
    state = ExperimentState(exp_dir)
    init_ray(num_cpus)
    print(f"experiment {exp.name!r}: {len(exp.variants)} variants on {manifest.name} ({root}); "
          f"output {exp_dir}", flush=True)

    best: dict[str, dict[str, Any]] = {}
    stage1, stage2 = exp.stage1(), exp.stage2()
    if stage1:
        banner(f"stage 1: search {', '.join(stage1)}")
        for v in stage1:
            best[v] = search_variant(exp, v, {}, state, resume)
    inits: dict[str, dict[str, str]] = {v: {} for v in exp.variants}
    if stage2:
        how = "from scratch" if exp.final.from_scratch else "initialised from the best stage-1 models"
        banner(f"stage 2: search {', '.join(stage2)} ({how})")
        for v in stage2:
            if not exp.final.from_scratch:
                inits[v] = {expert: best[src]["model_path"] for expert, src in stage1_variants(v, modalities).items()}
            best[v] = search_variant(exp, v, inits[v], state, resume)
    banner(f"final: best configuration x seeds {exp.final.seeds}, test split")
    final_runs(exp, best, inits, state, resume)
    table = results_table(exp_dir)
    paths = save_table(table, exp_dir)
    print(f"\n=== results ({time.time() - started:.0f} s) ===", flush=True)
    print(render_markdown(table), flush=True)
    print(f"\ntables: {', '.join(str(p) for p in paths)}\n"
          f"curves: tensorboard --logdir {exp_dir} --host 127.0.0.1", flush=True)
    return table
