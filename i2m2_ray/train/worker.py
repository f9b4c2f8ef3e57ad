"""The training loop inside a Ray Train worker: its session (DDP/FSDP2 wrapping, rank-0 checkpoints, resume)
and the function every worker of a ``TorchTrainer`` runs (launched by ``i2m2_ray.train.distributed``).

Rank 0 may run on a node that shares no disk with the trial that launched it: its checkpoints go to the
Train run's storage, and with ``PUBLISH_KEY`` it publishes the loop's files to a storage directory itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from i2m2_ray.train.config import TrainConfig
from i2m2_ray.train.session import (
    STATE_FILE,
    Session,
    add_best,
    load_latest,
    load_state_file,
    read_torch_file,
    restore_best,
    save_state,
    unwrap,
)

RUN_NAME = "checkpoints"  # Ray Train run name: its directory is run_dir/checkpoints, as for local runs
PUBLISH_KEY = "_publish_to"  # train_loop_config key of the Storage rank 0 publishes to (not a TrainConfig key)
PRESHUFFLED_KEY = "_preshuffled"  # ... and whether the training shard's rows come permuted (a shuffled stream)


class RayTrainSession(Session):
    """The Session of one Ray Train worker: DDP/FSDP2 wrapping, rank-0 checkpoints, resume.

    ``report`` runs on ALL ranks (``ray.train.report`` is a barrier); only rank 0 attaches
    a checkpoint. Full state dicts are gathered with collectives, so every rank calls
    ``model_state`` / ``optimizer_state`` and only rank 0 keeps the result.
    """

    def __init__(self, run_dir: str | Path, strategy: str = "ddp", resume: bool = True, publish_to: Any = None) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.run_dir, self.strategy, self.resume = Path(run_dir).expanduser(), strategy, resume
        self.publish_to = publish_to  # a Storage: where rank 0 publishes the run's files (a Tune trial's dir)
        self.device = torch.device("cpu")
        self.nodes = worker_nodes(self.world_size)
        self.reports = 0

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

    def load_best(self, model: nn.Module, path: Path) -> None:
        """Rank 0's ``model.pt`` into every rank: the other ranks' nodes may never have seen the file (and a
        sharded load is a collective, so a rank that skipped it would leave the others waiting)."""
        if self.world_size == 1:
            super().load_best(model, path)
            return
        found = torch.tensor([float(self.rank == 0 and path.is_file())], device=self.device)
        dist.broadcast(found, src=0)
        if not found.item():
            return
        state = read_torch_file(path, "model weights") if self.rank == 0 else {}
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True,
                                                                        broadcast_from_rank0=True))
            return
        if self.rank == 0:
            unwrap(model).load_state_dict(state)
        for tensor in [*unwrap(model).parameters(), *unwrap(model).buffers()]:
            dist.broadcast(tensor.data, src=0)

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

        from i2m2_ray.train.loop import EARLY_ARTIFACTS, MODEL_FILE, REPORT_ARTIFACTS

        self.reports += 1
        metrics = {**metrics, **self.where()}
        if self.rank == 0 and self.publish_to is not None:
            self.publish_to.publish(self.run_dir, (*EARLY_ARTIFACTS, *REPORT_ARTIFACTS) if self.reports == 1
                                    else REPORT_ARTIFACTS)
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="i2m2-ckpt-") as tmp:
            save_state(state, Path(tmp), metrics)
            add_best(Path(tmp), self.run_dir / MODEL_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"epoch_{int(metrics['epoch']):03d}")

    def load_state(self) -> dict[str, Any] | None:
        """Ray's checkpoint after a worker-group restart or a re-run of the same run; else the latest
        ``epoch_*`` under run_dir/checkpoints (e.g. written by an in-process run) when resuming."""
        import ray.train

        from i2m2_ray.train.loop import MODEL_FILE

        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as folder:
                if self.rank == 0:  # a restart on another node: the best weights come with the checkpoint
                    restore_best(Path(folder), self.run_dir / MODEL_FILE)
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


def train_fn_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """The function every TorchTrainer worker runs: rebuild the config, then the one training loop."""
    import ray.train.torch

    from i2m2_ray.config import from_dict
    from i2m2_ray.train.loop import ARTIFACTS, train

    config = dict(config)
    publish_to = config.pop(PUBLISH_KEY, None)
    preshuffled = bool(config.pop(PRESHUFFLED_KEY, False))
    cfg = from_dict(TrainConfig, config)
    if torch.cuda.is_available() and str(cfg.gpu).lower() != "false":
        torch.cuda.set_device(ray.train.torch.get_device())
    session = RayTrainSession(cfg.run_dir, cfg.strategy, cfg.resume, publish_to)
    data = None
    if cfg.data_mode != "memory":
        from i2m2_ray.data.ray_shard import RayShardData
        from i2m2_ray.train.loop import prepare_run

        root, manifest, mods = prepare_run(cfg)
        data = RayShardData(root, manifest, mods, ray.train.get_dataset_shard("train"), preshuffled)
    result = train(cfg, session=session, data=data, console=session.rank == 0)
    if session.rank == 0 and publish_to is not None:
        publish_to.publish(cfg.run_dir, ARTIFACTS)
    return result
