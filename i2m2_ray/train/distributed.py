"""Data-parallel training under Ray Train, and the launcher that decides whether to use it.

``run_training(cfg)`` runs ONE loop (``i2m2_ray.train.loop.train``) either in-process
(one worker: no Ray import, no worker-group start-up, which costs 12-15 s on a small
machine) or as ``train_fn_per_worker`` on every worker of a ``TorchTrainer`` (DDP or
FSDP2). Ray is imported lazily so the in-process path runs with torch and numpy only.

Checkpoints of both paths share one layout, ``run_dir/checkpoints/epoch_NNN/state.pt``
(Ray's run is named ``checkpoints`` with ``run_dir`` as its storage path), so a run can
be resumed by either launcher.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from i2m2_ray.errors import CheckpointError, ConfigError, I2M2Error
from i2m2_ray.train.config import TrainConfig
from i2m2_ray.train.session import STATE_FILE, Session, load_latest, load_state_file, save_state, unwrap

RUN_NAME = "checkpoints"  # Ray Train run name: its directory is run_dir/checkpoints, as for local runs
CONTROLLER_FAILURE_LIMIT = 2  # Ray's default (-1) retries an unplaceable worker group forever


class TrainingFailedError(I2M2Error):
    """A distributed run failed after its allowed worker-group restarts."""


class RayTrainSession(Session):
    """The Session of one Ray Train worker: DDP/FSDP2 wrapping, rank-0 checkpoints, resume.

    ``report`` runs on ALL ranks (``ray.train.report`` is a barrier); only rank 0 attaches
    a checkpoint. Full state dicts are gathered with collectives, so every rank calls
    ``model_state`` / ``optimizer_state`` and only rank 0 keeps the result.
    """

    def __init__(self, run_dir: str | Path, strategy: str = "ddp", resume: bool = True) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.run_dir, self.strategy, self.resume = Path(run_dir).expanduser(), strategy, resume
        self.device = torch.device("cpu")
        self.nodes = worker_nodes(self.world_size)

    def where(self) -> dict[str, str]:
        """Rank 0's node and every rank's node (comma-separated, by rank): which machines trained."""
        return {"node_id": self.nodes[0], "worker_nodes": ",".join(self.nodes)}

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp" and self.world_size > 1

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        self.device = device
        if self.world_size == 1:
            return model
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            # Ranks seed differently (seed + rank); DDP broadcasts rank 0's weights, fully_shard does not.
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)
            # One shard group per expert (each its own encoder), then the root: an expert's
            # parameters are gathered only while that expert runs.
            for expert in getattr(model, "experts", {}).values():
                fully_shard(expert)
            return fully_shard(model)
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def _options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not self.sharded:
            return super().model_state(model)
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=self._options())

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if not self.sharded:
            super().load_model_state(model, state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if not self.sharded:
            return super().optimizer_state(model, optimizer)
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=self._options())

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if not self.sharded:
            super().load_optimizer_state(model, optimizer, state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def sync_epoch(self, model: nn.Module, train_loss: float) -> float:
        """Give every rank rank 0's buffers (BatchNorm running stats are per-rank in DDP) so all ranks
        evaluate the same model, reach the same early-stopping decision and checkpoint what they
        evaluated; return the train loss averaged over ranks (equal sample counts per rank)."""
        if self.world_size == 1:
            return train_loss
        for buf in unwrap(model).buffers():
            dist.broadcast(buf, src=0)
        loss = torch.tensor([train_loss], dtype=torch.float64, device=self.device)
        dist.all_reduce(loss)
        return float(loss.item()) / self.world_size

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.train

        metrics = {**metrics, **self.where()}
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="i2m2-ckpt-") as tmp:
            save_state(state, Path(tmp), metrics)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"epoch_{int(metrics['epoch']):03d}")

    def load_state(self) -> dict[str, Any] | None:
        """Ray's checkpoint after a worker-group restart or a re-run of the same run; else the latest
        ``epoch_*`` under run_dir/checkpoints (e.g. written by an in-process run) when resuming."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as folder:
                return load_state_file(Path(folder) / STATE_FILE, shown=f"{ckpt.path}/{STATE_FILE}")
        if not self.resume:
            return None
        return load_latest(self.run_dir / RUN_NAME)


def worker_nodes(world_size: int) -> list[str]:
    """The Ray node id of every rank, in rank order (one gloo/NCCL all-gather at start-up)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if world_size == 1 or not dist.is_initialized():
        return [node]
    nodes: list[Any] = [None] * world_size
    dist.all_gather_object(nodes, node)
    return [str(n) for n in nodes]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    folder = Path(run_dir).expanduser() / RUN_NAME
    found = sorted(p for p in folder.glob("epoch_*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []
    return found[-1] if found else None


def train_fn_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """The function every TorchTrainer worker runs: rebuild the config, then the one training loop."""
    import ray.train.torch

    from i2m2_ray.config import from_dict
    from i2m2_ray.train.loop import train

    cfg = from_dict(TrainConfig, config)
    if torch.cuda.is_available() and str(cfg.gpu).lower() != "false":
        torch.cuda.set_device(ray.train.torch.get_device())
    session = RayTrainSession(cfg.run_dir, cfg.strategy, cfg.resume)
    data = None
    if cfg.data_mode != "memory":
        from i2m2_ray.data.ray_shard import RayShardData
        from i2m2_ray.train.loop import prepare_run

        root, manifest, mods = prepare_run(cfg)
        data = RayShardData(root, manifest, mods, ray.train.get_dataset_shard("train"))
    return train(cfg, session=session, data=data, console=session.rank == 0)


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


def train_datasets(cfg: TrainConfig) -> dict[str, Any] | None:
    """The training split as a Ray Dataset for ``data_mode`` != memory (mode chosen by ``choose_mode``:
    materialized once here in the driver when it fits, else streamed to the workers' shards)."""
    if cfg.data_mode == "memory":
        return None
    from i2m2_ray.data.ray_data import RayBatches
    from i2m2_ray.train.loop import prepare_run

    root, _, mods = prepare_run(cfg)
    # shuffle: a streamed split's read tasks come in a new order every epoch (the workers add Ray's
    # local shuffle buffer); a materialized one is shuffled by that buffer only.
    reader = RayBatches(root, "train", cfg.optim.batch_size // cfg.workers, modalities=mods, shuffle=True,
                        seed=cfg.seed, mode=cfg.data_mode, reserved_cpus=cfg.workers * cfg.cpus_per_worker)
    print(f"training data: Ray Data, {reader.mode} ({root})", flush=True)
    return {"train": reader.dataset}


def build_trainer(cfg: TrainConfig, *, name: str = RUN_NAME, storage_path: str | Path | None = None,
                  callbacks: list[Any] | None = None):
    """A ready TorchTrainer for ``cfg`` (also used by the Tune service for multi-worker trials)."""
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
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config=config,
        datasets=train_datasets(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources,
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path or cfg.run_dir).expanduser().resolve()),
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


__all__ = ["RayTrainSession", "TrainingFailedError", "build_trainer", "check_placement", "run_training",
           "train_fn_per_worker", "use_ray"]
