"""The service's building blocks, public so benches compose exactly what the runner runs.

``init_ray`` -> ``trial_param_space`` -> ``build_tuner`` (seeded TPE from ``make_sampler``, ASHA, our
callbacks, the trainable from ``make_trainable``) -> ``Tuner.fit()``. The runner (phases.py) uses
these same functions; nothing here knows about stages or the results table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from i2m2_ray.tune.experiment import ExperimentConfig
from i2m2_ray.tune.space import tune_domain


def metric_key(exp: ExperimentConfig) -> str:
    """The per-trial metric Tune and Optuna optimise: the best validation value so far."""
    return f"val/{exp.metric}_best"


def init_ray(num_cpus: int | None = None) -> None:
    """The shared cluster set-up, with Tune's own output replaced by our progress lines."""
    import logging

    import optuna

    from i2m2_ray import cluster

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # our loggers instead (see tensorboard.py)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray.tune.search.optuna").setLevel(logging.ERROR)  # "nan is not acceptable": see trial lines
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cluster.init_ray(num_cpus, log_to_driver=False)


def sampler_seed(exp: ExperimentConfig, variant: str) -> int:
    """One seed per (experiment, variant): every variant's search is reproducible on its own."""
    return exp.seed + sum(map(ord, variant))


def make_sampler(exp: ExperimentConfig, variant: str, seed: int | None = None):
    """Seeded multivariate TPE that starts modelling after a third of the budget (Optuna's default
    waits for 10 random trials, which would make every small search a random search)."""
    import optuna

    return optuna.samplers.TPESampler(seed=sampler_seed(exp, variant) if seed is None else seed, multivariate=True,
                                      n_startup_trials=max(2, min(10, exp.budget.trials // 3)))


def trial_param_space(exp: ExperimentConfig, variant: str, init: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"base": resolved TrainConfig dict, "<dotted.path>": Tune domain, ...}`` for one variant's search."""
    space: dict[str, Any] = {"base": exp.trial_base(variant, init or {})}
    space.update({path: tune_domain(spec) for path, spec in exp.space_for(variant).items()})
    return space


def make_trainable(exp: ExperimentConfig):
    """The trial function with its resources. In-process trials hold their CPUs (and GPU); a
    multi-worker trial only drives its TorchTrainer, so it holds a sliver of a CPU and the workers
    hold the rest (RAY.md: a whole CPU for the driver plus the workers never places on a small machine)."""
    from ray import tune

    from i2m2_ray.tune.trainable import run_trial

    r = exp.resources
    if r.workers > 1:
        return tune.with_resources(run_trial, {"cpu": 0.01})
    return tune.with_resources(run_trial, {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_worker})


def concurrency(exp: ExperimentConfig) -> int:
    """Trials at once: ``budget.concurrency``, or as many as the cluster's CPUs hold."""
    import ray

    if exp.budget.concurrency:
        return exp.budget.concurrency
    r = exp.resources
    cpus = ray.cluster_resources().get("CPU", 1.0)
    per_trial = r.cpus_per_trial * r.workers if r.workers > 1 else r.cpus_per_trial
    return max(1, int(cpus // per_trial))


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default embeds the whole config, base included)."""
    return f"trial_{trial.trial_id}"


def build_tuner(exp: ExperimentConfig, name: str, variant: str, param_space: dict[str, Any], *, search: bool = True,
                seed: int | None = None, storage_path: str | None = None):
    """A new Tune run named ``name``: OptunaSearch + ASHA for a search, a plain grid otherwise."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from i2m2_ray.tune.progress import TrialPrinter
    from i2m2_ray.tune.tensorboard import FlatHParamsTBXLogger

    b, key = exp.budget, metric_key(exp)
    tune_config = tune.TuneConfig(
        metric=key, mode=exp.mode, max_concurrent_trials=concurrency(exp),
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname,
        num_samples=b.trials if search else 1,
        search_alg=OptunaSearch(sampler=make_sampler(exp, variant, seed)) if search else None,
        scheduler=ASHAScheduler(time_attr="epoch", max_t=b.max_epochs, grace_period=b.grace_period,
                                reduction_factor=b.reduction_factor) if search else None)
    run_config = tune.RunConfig(
        name=name, storage_path=storage_path or str(Path(exp.output_dir).resolve()), verbose=0,
        callbacks=[TrialPrinter(variant, key), CSVLoggerCallback(), JsonLoggerCallback(), FlatHParamsTBXLogger()],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=1))
    return tune.Tuner(make_trainable(exp), param_space=param_space, tune_config=tune_config, run_config=run_config)
