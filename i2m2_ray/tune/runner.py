"""The experiment driver: stage 1 (unimodal, inter), stage 2 (intra, I2M2 from stage-1 weights), each stage's
variants searched side by side in one Tune run (stages.py), final seeds
(stage 1, then stage 2 from the same seed's stage-1 final models), then the results table. Validation happens
before Ray starts; one driver per experiment directory. The directory may be object storage (storage.py): its
lock is then a local one keyed by the URI, so two drivers on different machines are not excluded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from i2m2_ray.config import to_dict
from i2m2_ray.data.dataset import resolve_dataset
from i2m2_ray.data.format import load_manifest
from i2m2_ray.errors import ConfigError
from i2m2_ray.fsutil import dir_lock
from i2m2_ray.models.builder import model_modalities, stage1_variants
from i2m2_ray.storage import Storage, lock_dir, open_storage
from i2m2_ray.tune.experiment import (
    ExperimentConfig,
    check_variants,
    experiment_from_dict,
)
from i2m2_ray.tune.phases import Interrupted, final_stage1, final_stage2
from i2m2_ray.tune.results import render_markdown, results_table, save_table
from i2m2_ray.tune.service import check_resources, init_ray
from i2m2_ray.tune.stages import search_stage
from i2m2_ray.tune.state import (
    EXPERIMENT_FILE,
    STATE,
    ExperimentState,
    code_fingerprint,
)

__all__ = ["EXPERIMENT_FILE", "Interrupted", "experiment_lock", "run_experiment"]

CODE_CHANGED = ("note: the code changed since this experiment started; finished phases are kept, "
                "the table is rebuilt from them")


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def saved_experiment(exp_dir: str | Path | Storage) -> ExperimentConfig | None:
    """The experiment an earlier run saved there, in today's form (defaults filled, old keys translated)."""
    storage = open_storage(exp_dir)
    path = storage.location(EXPERIMENT_FILE)
    if not storage.is_file(EXPERIMENT_FILE):
        return None
    try:
        return experiment_from_dict(storage.read_yaml(EXPERIMENT_FILE))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if path in message else f"{path}: {message}") from None


def _check_same_experiment(exp: ExperimentConfig, exp_dir: Storage) -> None:
    saved = saved_experiment(exp_dir)
    if saved is None:
        return
    before, now = to_dict(saved), to_dict(exp)
    for key in now:
        if key != "output_dir" and before.get(key) != now[key]:
            raise ConfigError(f"{exp_dir}: holds an experiment with a different '{key}'; "
                              "use a new output_dir (finished trials there are kept)")


def experiment_lock(exp_dir: str | Path | Storage):
    """One driver per experiment directory: a second would restore the same phase and race on its checkpoints."""
    return dir_lock(lock_dir(open_storage(exp_dir)), what="run of this experiment")


def run_experiment(exp: ExperimentConfig, resume: bool = True, num_cpus: int | None = None):
    """Run (or resume) every phase, then write and return the results table."""
    started = time.time()
    exp_dir = open_storage(exp.output_dir)
    exp_dir.check()  # a missing bucket or a dead endpoint fails here, before Ray starts
    root = resolve_dataset(exp.dataset)
    manifest = load_manifest(root)
    modalities = model_modalities(manifest, exp.base_train_config().model)
    check_variants(exp, manifest, modalities)
    check_resources(exp, num_cpus)  # starts Ray; a trial no node can place fails here, nothing written
    with experiment_lock(exp_dir):
        if not resume and exp_dir.exists(STATE):
            raise ConfigError(f"{exp_dir}: an experiment exists there and --no-resume was given; use a new output_dir")
        _check_same_experiment(exp, exp_dir)
        return _run_locked(exp, exp_dir, root, modalities, num_cpus, resume, started)


def _note_code_change(state: ExperimentState) -> None:
    """Finished phases are trusted across upgrades, but not silently: say so once, record the new code."""
    code = code_fingerprint()
    if state.data["phases"] and state.data.get("code") != code:
        print(CODE_CHANGED, flush=True)
    if state.data.get("code") != code:
        state.data["code"] = code
        state.save()


def _run_locked(exp: ExperimentConfig, exp_dir: Storage, root: Path, modalities: list[str], num_cpus: int | None,
                resume: bool, started: float):
    manifest = load_manifest(root)
    state = ExperimentState(exp_dir)
    exp_dir.write_yaml(EXPERIMENT_FILE, to_dict(exp))
    _note_code_change(state)
    init_ray(num_cpus)
    print(f"experiment {exp.name!r}: {len(exp.variants)} variants on {manifest.name} ({root}); "
          f"output {exp_dir}", flush=True)

    best: dict[str, dict[str, Any]] = {}
    stage1, stage2 = exp.stage1_variants(), exp.stage2_variants()
    if stage1:
        banner(f"stage 1: search {', '.join(stage1)} (side by side)")
        best.update(search_stage(exp, 1, {v: {} for v in stage1}, state, resume))
    inits: dict[str, dict[str, str]] = {v: {} for v in exp.variants}
    if stage2:
        how = "from scratch" if exp.stage2.from_scratch else "initialised from the best stage-1 models"
        banner(f"stage 2: search {', '.join(stage2)} ({how}, side by side)")
        for v in stage2:
            if not exp.stage2.from_scratch:
                inits[v] = {expert: best[src]["model_path"] for expert, src in stage1_variants(v, modalities).items()}
        best.update(search_stage(exp, 2, {v: inits[v] for v in stage2}, state, resume))
    banner(f"final: best configuration x seeds {exp.final.seeds}, test split")
    final_stage1(exp, best, state, resume)
    if stage2:
        how = ("from scratch" if exp.stage2.from_scratch else "every seed from the best search trials"
               if exp.final.shared_init else "seed s from the stage-1 final models of seed s")
        banner(f"final stage 2: {', '.join(stage2)} x seeds {exp.final.seeds} ({how})")
        final_stage2(exp, best, modalities, inits, state, resume)
    table = results_table(exp_dir)
    paths = save_table(table, exp_dir)
    print(f"\n=== results ({time.time() - started:.0f} s) ===", flush=True)
    print(render_markdown(table), flush=True)
    print(f"\ntables: {', '.join(str(p) for p in paths)}\n"
          f"curves: tensorboard --logdir {exp_dir} --host 127.0.0.1", flush=True)
    return table
