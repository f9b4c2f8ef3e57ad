"""Data-parallel training under Ray Train, and the launcher that decides whether to use it.

``run_training(cfg)`` runs ONE loop (``i2m2_ray.train.loop.train``) either in-process
(one worker: no Ray import, no worker-group start-up, which costs 12-15 s on a small
machine) or as ``train_fn_per_worker`` (``i2m2_ray.train.worker``) on every worker of a
``TorchTrainer`` (DDP or FSDP2). Ray is imported lazily so the in-process path runs with torch and numpy only.

Checkpoints of both paths share one layout, ``run_dir/checkpoints/epoch_NNN/state.pt``
(Ray's run is named ``checkpoints`` with ``run_dir`` as its storage path), so a run can
be resumed by either launcher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from i2m2_ray.errors import CheckpointError, ConfigError, I2M2Error
from i2m2_ray.train.config import TrainConfig
from i2m2_ray.train.session import STATE_FILE
from i2m2_ray.train.worker import PRESHUFFLED_KEY, PUBLISH_KEY, RUN_NAME, train_fn_per_worker

CONTROLLER_FAILURE_LIMIT = 2  # Ray's default (-1) retries an unplaceable worker group forever


class TrainingFailedError(I2M2Error):
    """A distributed run failed after its allowed worker-group restarts."""


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    folder = Path(run_dir).expanduser() / RUN_NAME
    found = sorted(p for p in folder.glob("epoch_*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []
    return found[-1] if found else None


def use_ray(cfg: TrainConfig) -> bool:
    """Ray Train only when a run needs more than one worker, unless ``launcher`` forces a path."""
    if cfg.launcher == "auto":
        return cfg.workers > 1
    return cfg.launcher == "ray"


def resolve_gpu(cfg: TrainConfig, cluster_gpus: float) -> bool:
    want = str(cfg.gpu).lower()
    if want == "true":
        if cluster_gpus <= 0:
            raise ConfigError("gpu=true but the Ray cluster has no GPUs")
        return True
    return want == "auto" and cluster_gpus > 0


def check_placement(cfg: TrainConfig, use_gpu: bool) -> None:
    """Fail in seconds, in one line, when the cluster can never place the workers (Ray would wait):
    each worker's CPUs, GPU and memory on some node, and all of them on the cluster at once."""
    from i2m2_ray.placement import GIB, alive_nodes, check_fits, worker_bundle

    worker = worker_bundle(cfg, use_gpu)
    names = {"CPU": f"cpus_per_worker={cfg.cpus_per_worker:g}", "GPU": f"gpus_per_worker={cfg.gpus_per_worker:g}",
             "memory": f"a worker's memory ({worker['memory'] / GIB:.1f} GiB, "
                       "estimated from the dataset and the model)",
             "workers": f"workers={cfg.workers}"}
    check_fits([{}, *[worker] * cfg.workers], alive_nodes(), names, "lower workers or cpus_per_worker")


def train_reader(cfg: TrainConfig) -> Any:
    """The training split's ``RayBatches`` for ``data_mode`` != memory (mode chosen by ``choose_mode``:
    materialized once here in the driver when it fits, else streamed to the workers' shards), else None."""
    if cfg.data_mode == "memory":
        return None
    from i2m2_ray.data.dataset import stream_cache_dir
    from i2m2_ray.data.ray_data import RayBatches
    from i2m2_ray.train.loop import prepare_run

    root, _, mods = prepare_run(cfg)
    # shuffle: a streamed split's read tasks, and the rows inside each, come in a new order every epoch; a
    # materialized one is permuted once when read, then mixed per epoch by the workers' local shuffle buffer.
    reader = RayBatches(root, "train", cfg.optim.batch_size // cfg.workers, modalities=mods, shuffle=True,
                        seed=cfg.seed, mode=cfg.data_mode, reserved_cpus=cfg.workers * cfg.cpus_per_worker,
                        cache_dir=stream_cache_dir(cfg.dataset))
    cached = f"; decoded blocks kept under {reader.cache_dir}" if reader.mode == "stream" and reader.cache_dir else ""
    print(f"training data: Ray Data, {reader.mode} ({root}{cached})", flush=True)
    return reader


def build_trainer(cfg: TrainConfig, *, name: str = RUN_NAME, storage: Any = None, callbacks: list[Any] | None = None):
    """A ready TorchTrainer for ``cfg`` (also used by the Tune service for multi-worker trials).

    ``storage`` (a ``Storage``, e.g. a Tune trial's directory on S3) holds the run's checkpoints and gets the
    loop's files from rank 0; without it both stay in ``run_dir``, which every rank must then see.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from i2m2_ray.config import to_dict

    use_gpu = resolve_gpu(cfg, ray.cluster_resources().get("GPU", 0.0))
    check_placement(cfg, use_gpu)
    # memory stays out of the workers' request: with it, a Tune trial's second worker group never placed
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if use_gpu else {})}
    config = to_dict(cfg)
    config["run_dir"] = str(Path(cfg.run_dir).expanduser().resolve())
    if not use_gpu:
        config["gpu"] = "false"
    where = {"storage_path": str(Path(cfg.run_dir).expanduser().resolve())}
    if storage is not None:
        config[PUBLISH_KEY] = storage
        where = {"storage_path": storage.root, "storage_filesystem": storage.fs}
    reader = train_reader(cfg)
    if reader is not None:
        config[PRESHUFFLED_KEY] = reader.preshuffled
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config=config,
        datasets=None if reader is None else {"train": reader.dataset},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources,
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=name,
            **where,
            callbacks=callbacks,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute=f"val/{cfg.metric}",
                                               checkpoint_score_order=cfg.mode),
            failure_config=FailureConfig(max_failures=cfg.max_failures,
                                         controller_failure_limit=CONTROLLER_FAILURE_LIMIT),
        ),
    )


def run_training(cfg: TrainConfig, console: bool = True) -> dict[str, Any]:
    """Train ``cfg`` in-process or with Ray Train (see ``use_ray``); returns the final metrics.

    One run per directory: a second ``run_training`` on the same ``run_dir`` fails at once (it would
    race on the checkpoints). The Ray path needs ``ray.init`` done by the caller (the CLI does it).
    """
    from i2m2_ray.fsutil import dir_lock
    from i2m2_ray.train.loop import prepare_run, train

    prepare_run(cfg)  # config and dataset errors first: a rejected run leaves the run_dir as it was
    with dir_lock(Path(cfg.run_dir).expanduser(), what="training run"):
        if not use_ray(cfg):
            return train(cfg, console=console)
        return _fit(cfg)


def _fit(cfg: TrainConfig) -> dict[str, Any]:
    """The TorchTrainer run; a user error raised in a worker (diverged, bad checkpoint) comes back as is."""
    import ray
    from ray.train import TrainingFailedError as RayTrainingFailed

    from i2m2_ray.train.loop import RESULT_FILE

    if not ray.is_initialized():
        raise ConfigError("workers > 1 (or launcher=ray) needs a Ray cluster: call ray.init first")
    run_dir = Path(cfg.run_dir).expanduser()
    if not cfg.resume and latest_checkpoint(run_dir) is not None:
        raise CheckpointError(f"{run_dir / RUN_NAME}: has checkpoints but resume=false; choose a new run_dir")
    trainer = build_trainer(cfg)
    try:
        result = trainer.fit()
    except RayTrainingFailed as exc:
        for failure in getattr(exc, "worker_failures", {}).values():
            cause = getattr(failure, "_base_exc", failure)  # Train V2 wraps the worker's exception
            if isinstance(cause, I2M2Error):
                raise cause.with_traceback(None) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingFailedError(f"distributed run failed after max_failures={cfg.max_failures} "
                                  f"restart(s): {first}") from exc
    if isinstance(result.return_value, dict):
        return result.return_value
    return json.loads((run_dir / RESULT_FILE).read_text())


__all__ = ["TrainingFailedError", "build_trainer", "check_placement", "run_training", "use_ray"]
