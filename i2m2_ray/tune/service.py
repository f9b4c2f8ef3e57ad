"""The service's building blocks, public so benches compose exactly what the runner runs.

``check_resources`` (starts Ray, refuses trials no node can place) -> ``trial_param_space`` ->
``build_tuner`` (seeded TPE from ``make_sampler``, ASHA, our callbacks, the trainable from
``make_trainable`` with its CPUs, GPUs and memory) -> ``Tuner.fit()``; ``build_stage_tuner`` does the
same for several variants at once (one study and one ASHA per variant, see multisearch.py). The runner (phases.py) uses
these same functions; nothing here knows about stages or the results table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from i2m2_ray.config import from_dict, to_dict
from i2m2_ray.placement import GIB, alive_nodes, check_fits, concurrent, estimate_memory, local_node
from i2m2_ray.tune.experiment import ExperimentConfig
from i2m2_ray.tune.space import spec_values, tune_domain, with_values

SKIP_CHECK = "set resources.check_placement=false on an autoscaling cluster"
# A finished trial's process runs the next trial (every trial asks for the same resources): without it
# each trial starts a new Ray worker that imports torch and the package again, seconds on 2 CPUs.
REUSE_ACTORS = os.environ.get("I2M2_REUSE_ACTORS", "1") != "0"
_MEMORY: dict[str, int] = {}  # experiment -> estimated bytes per trial (build_tuner asks once per phase)


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


def trial_memory(exp: ExperimentConfig) -> int:
    """Bytes a trial (each Train worker when workers > 1) reserves: ``resources.memory_per_trial``, or the
    largest estimate over the variants and every searched model value (one number for the experiment)."""
    if exp.resources.memory_per_trial is not None:
        return int(exp.resources.memory_per_trial * GIB)
    key = json.dumps(to_dict(exp), sort_keys=True, default=str)
    if key not in _MEMORY:
        _MEMORY[key] = _estimate_memory(exp)
    return _MEMORY[key]


def _estimate_memory(exp: ExperimentConfig) -> int:
    from i2m2_ray.data.dataset import resolve_dataset
    from i2m2_ray.data.format import load_manifest
    from i2m2_ray.train.config import TrainConfig

    manifest = load_manifest(resolve_dataset(exp.dataset))
    base = exp.base_train_config()
    splits = ("train", "val", "test") if base.data_mode == "memory" else ("val", "test")
    most = 0
    for variant in exp.variants:
        models = [base.model]
        for path, spec in exp.space_for(variant).items():
            if path.startswith("model."):
                models += [from_dict(TrainConfig, with_values(exp.trial_base(variant, {}), {path: v})).model
                           for v in spec_values(spec)]
        most = max(most, *(estimate_memory(manifest, m, variant, splits) for m in models))
    return most


def trial_bundles(exp: ExperimentConfig) -> list[dict[str, float]]:
    """What one trial asks Ray for: one bundle in-process; with workers > 1 the driver's sliver of a CPU
    (RAY.md: a whole CPU for the driver plus the workers never places on a small machine), then one
    bundle per Train worker."""
    r = exp.resources
    worker = {"CPU": r.cpus_per_trial, "GPU": r.gpus_per_worker, "memory": float(trial_memory(exp))}
    return [{"CPU": 0.01}, *[dict(worker) for _ in range(r.workers)]] if r.workers > 1 else [worker]


def make_trainable(exp: ExperimentConfig):
    """The trial function with its resources. In-process trials hold their CPUs, GPU and memory; a
    multi-worker trial only drives its TorchTrainer, whose workers hold the rest."""
    from ray import tune

    from i2m2_ray.tune.trainable import run_trial

    bundle = trial_bundles(exp)[0]
    return tune.with_resources(run_trial, {k.lower() if k != "memory" else k: v for k, v in bundle.items()})


def concurrency(exp: ExperimentConfig) -> int:
    """Trials at once: ``budget.concurrency``, or as many as the cluster's CPUs, GPUs and memory hold
    (a multi-worker trial counted by its workers)."""
    import ray

    if exp.budget.concurrency:
        return exp.budget.concurrency
    bundles = trial_bundles(exp)
    return concurrent(bundles[1:] if exp.resources.workers > 1 else bundles, ray.cluster_resources())


def check_resources(exp: ExperimentConfig, num_cpus: int | None = None) -> None:
    """Start or join Ray, then refuse in one line a trial no node can ever place (Ray would wait forever,
    silently). ``resources.check_placement=false`` skips it: an autoscaling cluster adds nodes on demand.
    A local cluster is checked against this machine first: a busy machine takes 30 s to start Ray."""
    check = exp.resources.check_placement
    ray = sys.modules.get("ray")
    if check and os.environ.get("RAY_ADDRESS", "local") in ("", "local") and not (ray and ray.is_initialized()):
        check_fits(trial_bundles(exp), [local_node(num_cpus)], _names(exp), SKIP_CHECK)
    init_ray(num_cpus)
    if check:
        check_fits(trial_bundles(exp), alive_nodes(), _names(exp), SKIP_CHECK)


def _names(exp: ExperimentConfig) -> dict[str, str]:
    """Each resource a trial asks for, as the setting that asked for it."""
    r = exp.resources
    memory = trial_memory(exp)
    who = "a Train worker" if r.workers > 1 else "a trial"
    return {"CPU": f"resources.cpus_per_trial={r.cpus_per_trial:g}",
            "GPU": f"resources.gpus_per_worker={r.gpus_per_worker:g}",
            "memory": (f"resources.memory_per_trial={r.memory_per_trial:g}" if r.memory_per_trial is not None else
                       f"{who}'s memory ({memory / GIB:.1f} GiB, estimated from the dataset and the model)"),
            "workers": f"resources.workers={r.workers}"}


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default embeds the whole config, base included)."""
    return f"trial_{trial.trial_id}"


def study_name(exp: ExperimentConfig, variant: str) -> str:
    """The Optuna study of a variant's search in ``search.storage``: ``<experiment name>/<variant>``. A later
    experiment with the same ``name`` and storage continues the study (warm start); a new name, a new study."""
    return f"{exp.name}/{variant}"


def make_storage(spec: str):
    """An Optuna storage instance from ``search.storage``: an RDB URL, else a journal file path."""
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def make_searcher(exp: ExperimentConfig, variant: str, seed: int | None = None):
    """The variant's OptunaSearch: seeded TPE; its study kept in ``search.storage`` when one is set."""
    from ray.tune.search.optuna import OptunaSearch

    if exp.search_storage is None:
        return OptunaSearch(sampler=make_sampler(exp, variant, seed))
    return OptunaSearch(sampler=make_sampler(exp, variant, seed), storage=make_storage(exp.search_storage),
                        study_name=study_name(exp, variant))


def _run_config(exp: ExperimentConfig, name: str, callbacks: list, storage_path: str | None = None):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from i2m2_ray.storage import open_storage
    from i2m2_ray.tune.tensorboard import FlatHParamsTBXLogger

    where = {"storage_path": storage_path} if storage_path else open_storage(exp.output_dir).tune_args()
    return tune.RunConfig(
        name=name, **where, verbose=0,
        callbacks=[*callbacks, CSVLoggerCallback(), JsonLoggerCallback(), FlatHParamsTBXLogger()],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=1))


def log_dir(exp: ExperimentConfig, name: str, storage_path: str | None = None) -> Path:
    """Where the driver appends a run's own logs (timeline, ASHA decisions): the run's directory when the
    experiment is local; for object storage a scratch directory on the driver (``stages.py`` uploads them)."""
    from i2m2_ray.storage import lock_dir, open_storage

    if storage_path:
        return Path(storage_path) / name
    storage = open_storage(exp.output_dir)
    return (Path(storage.root) if not storage.remote else lock_dir(storage) / "logs") / name


def _asha_args(exp: ExperimentConfig) -> dict[str, Any]:
    b = exp.budget
    return {"time_attr": "epoch", "max_t": b.max_epochs, "grace_period": b.grace_period,
            "reduction_factor": b.reduction_factor}


def build_tuner(exp: ExperimentConfig, name: str, variant: str, param_space: dict[str, Any], *, search: bool = True,
                seed: int | None = None, storage_path: str | None = None):
    """A new Tune run named ``name``: OptunaSearch + ASHA for a search, a plain grid otherwise."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from i2m2_ray.tune.multisearch import TIMELINE, Timeline
    from i2m2_ray.tune.progress import TrialPrinter

    b, key = exp.budget, metric_key(exp)
    tune_config = tune.TuneConfig(
        metric=key, mode=exp.mode, max_concurrent_trials=concurrency(exp),
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname, reuse_actors=REUSE_ACTORS,
        num_samples=b.trials if search else 1,
        search_alg=make_searcher(exp, variant, seed) if search else None,
        scheduler=ASHAScheduler(**_asha_args(exp)) if search else None)
    timeline = Timeline(log_dir(exp, name, storage_path) / TIMELINE)
    run_config = _run_config(exp, name, [TrialPrinter(variant, key), timeline], storage_path)
    return tune.Tuner(make_trainable(exp), param_space=param_space, tune_config=tune_config, run_config=run_config)


def build_stage_tuner(exp: ExperimentConfig, name: str, spaces: dict[str, dict[str, Any]],
                      storage_path: str | None = None):
    """One Tune run searching several variants at once (``spaces``: variant -> ``trial_param_space``):
    each variant its own Optuna study and ASHA brackets, as many trials at once as the cluster holds."""
    from ray import tune

    from i2m2_ray.tune.multisearch import DECISIONS, TIMELINE, MultiSearch, Timeline, VariantASHA
    from i2m2_ray.tune.progress import TrialPrinter

    key = metric_key(exp)
    stage_dir = log_dir(exp, name, storage_path)
    searcher = MultiSearch(spaces, {v: make_searcher(exp, v) for v in spaces}, exp.budget.trials, key, exp.mode)
    tune_config = tune.TuneConfig(
        metric=key, mode=exp.mode, max_concurrent_trials=concurrency(exp),
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname, reuse_actors=REUSE_ACTORS,
        num_samples=exp.budget.trials * len(spaces), search_alg=searcher,
        scheduler=VariantASHA(list(spaces), stage_dir / DECISIONS, **_asha_args(exp)))
    run_config = _run_config(exp, name, [TrialPrinter("search", key), Timeline(stage_dir / TIMELINE)], storage_path)
    return tune.Tuner(make_trainable(exp), param_space={}, tune_config=tune_config, run_config=run_config)
