"""What one trial (or Train worker) asks Ray for, and whether the cluster can ever give it.

Ray waits silently, forever, for resources no node has (a GPU on a CPU-only cluster, more CPUs
or memory than any node): a request is checked here against the alive nodes before anything
runs, and fails in one line naming the resource. Memory is part of the request, estimated
from the manifest and the model, so concurrency and placement respect RAM as well as CPUs.
"""

from __future__ import annotations

import math
from typing import Any

from i2m2_ray.data.format import Manifest
from i2m2_ray.errors import ConfigError

GIB = 2**30
# Private memory (RssAnon) of one trial process beyond its data and parameters: Python, torch,
# Ray's worker runtime and the loop's working set. Measured: a smoke-sized in-process trial
# (ray + ray.tune + torch imported, one epoch of i2m2:lf, 320 rows) peaked at 507 MiB RssAnon;
# shared library pages (another ~660 MiB RssFile) are shared by the trials of a node, so not counted.
PROCESS_BYTES = 512 * 2**20
# Copies of the parameters a run holds: weights, gradients, up to two optimiser moments (Adam), best model.
PARAMETER_COPIES = 5
BYTES_PER_VALUE = 4  # the splits and parameters are float32
# Peak bytes per byte of loaded data when a process reads its own copy: the float32 arrays plus one decoded
# record batch (data/arrays.py decodes batch by batch into preallocated arrays; it was 2.5 while whole
# Arrow tables and float copies coexisted).
LOAD_COPIES = 1.1
# Inside Ray a node's trials share one copy of the splits in the object store (data/shared.py), which Ray
# sizes apart from the 'memory' resource trials reserve: a trial's own heap then holds only its batches.
SHARED_COPIES = 0.0
LABEL_BYTES = 8  # int64 labels, per row and head
ORDER = ("CPU", "GPU", "memory")


def parameter_count(manifest: Manifest, variant: str, model_cfg: Any) -> int:
    """The model's parameters, built on the meta device (no memory allocated)."""
    import torch

    from i2m2_ray.models.builder import build_model

    with torch.device("meta"):
        model = build_model(manifest, variant, model_cfg)
    return sum(p.numel() for p in model.parameters())


def data_bytes(manifest: Manifest, modalities: list[str], splits: tuple[str, ...] = ("train", "val", "test")) -> int:
    """The float32 tensors the in-memory reader holds for ``splits``: rows x model shape per modality."""
    per_row = sum(BYTES_PER_VALUE * math.prod(manifest.modalities[m].model_shape()) for m in modalities)
    per_row += LABEL_BYTES * (manifest.num_heads or 1)
    return sum(manifest.splits[s].rows * per_row for s in splits if s in manifest.splits)


def estimate_memory(manifest: Manifest, model_cfg: Any, variant: str,
                    splits: tuple[str, ...] = ("train", "val", "test"), shared: bool = True) -> int:
    """Bytes one trial process (or Train worker) needs at its peak: the parameters' copies and the
    process itself (``PROCESS_BYTES``), plus its splits only when it reads its own copy
    (``shared=False``: ``LOAD_COPIES`` x the float32 tensors). Shared splits are counted once per node,
    in the object store, not per trial. Conservative, so a node is not oversubscribed."""
    from i2m2_ray.models.builder import model_modalities

    mods = model_modalities(manifest, model_cfg)
    params = parameter_count(manifest, variant, model_cfg)
    data = int((SHARED_COPIES if shared else LOAD_COPIES) * data_bytes(manifest, mods, splits))
    return data + PARAMETER_COPIES * BYTES_PER_VALUE * params + PROCESS_BYTES


def worker_bundle(cfg: Any, use_gpu: bool) -> dict[str, float]:
    """What each Ray Train worker of a ``TrainConfig`` reserves: its CPUs, its GPU share and its memory
    (with data_mode=memory every worker holds the splits; Ray Data shards leave the train split out)."""
    from i2m2_ray.data.dataset import resolve_dataset
    from i2m2_ray.data.format import load_manifest

    manifest = load_manifest(resolve_dataset(cfg.dataset))
    splits = ("train", "val", "test") if cfg.data_mode == "memory" else ("val", "test")
    memory = float(estimate_memory(manifest, cfg.model, cfg.variant, splits))
    return {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if use_gpu else {}), "memory": memory}


def local_node(num_cpus: int | None = None) -> dict[str, float]:
    """Upper bounds of what a local Ray node started here would have, known before paying for its start
    (Ray may find less: cgroup CPU limits, CUDA_VISIBLE_DEVICES, the object store's share of memory),
    so a request refused against it would never be placed there either."""
    import glob
    import os

    import torch

    gpus = max(torch.cuda.device_count(), len(glob.glob("/dev/nvidia[0-9]*")))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(gpus), "memory": float(memory)}


def alive_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def amount(resource: str, value: float) -> str:
    return f"{value / GIB:.1f} GiB memory" if resource == "memory" else f"{value:g} {resource}"


def describe(resources: dict[str, float], every: bool = False) -> str:
    """``2 CPU, 0 GPU, 9.1 GiB memory`` (``every``: also the resources it lacks)."""
    return ", ".join(amount(k, resources.get(k, 0.0)) for k in ORDER if every or resources.get(k, 0.0) > 0)


def fits(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many copies of ``bundle`` one node holds."""
    need = {k: v for k, v in bundle.items() if v > 0}
    if not need:
        return 10**9
    return int(min(node.get(k, 0.0) / v for k, v in need.items()) + 1e-9)


def _placeable(worker: dict[str, float], nodes: list[dict[str, float]], driver: dict[str, float] | None) -> int:
    """Workers the cluster holds at once, after the trial's driver bundle takes its share of the best node."""
    total = sum(fits(worker, n) for n in nodes)
    if not driver:
        return total
    best = 0
    for node in nodes:
        if fits(driver, node) < 1:
            continue
        left = {k: node.get(k, 0.0) - driver.get(k, 0.0) for k in node}
        best = max(best, total - fits(worker, node) + fits(worker, left))
    return best


def check_fits(bundles: list[dict[str, float]], nodes: list[dict[str, float]], names: dict[str, str],
               hint: str) -> None:
    """Raise a one-line ConfigError if the cluster can never place ``bundles``.

    ``bundles``: one bundle (an in-process trial) or a driver bundle then identical worker bundles
    (a Train worker group, placed PACK across nodes). ``names``: resource -> the setting that asked
    for it (``"GPU": "resources.gpus_per_worker=1"``; ``"workers"`` for the group).
    """
    if not nodes:
        raise ConfigError(f"the Ray cluster has no alive node; {hint}")
    for bundle in bundles:
        for k in ORDER:
            want = bundle.get(k, 0.0)
            largest = max(nodes, key=lambda n, k=k: n.get(k, 0.0))
            if want > 0 and largest.get(k, 0.0) < want:
                lack = "a GPU" if k == "GPU" and largest.get(k, 0.0) == 0 else amount(k, want)
                raise ConfigError(f"{names.get(k, k)}: no node of this cluster has {lack} "
                                  f"(largest node: {describe(largest, every=True)}); {hint}")
        if not any(fits(bundle, n) for n in nodes):
            raise ConfigError(f"{', '.join(names.get(k, k) for k in ORDER if bundle.get(k, 0.0) > 0)}: no single "
                              f"node has {describe(bundle)} together "
                              f"(nodes: {'; '.join(describe(n, every=True) for n in nodes)}); {hint}")
    if len(bundles) < 2:
        return
    driver, workers = bundles[0], bundles[1:]
    count = _placeable(workers[0], nodes, driver)
    if count < len(workers):
        total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ORDER}
        have = ", ".join(amount(k, total[k]) for k in ORDER if workers[0].get(k, 0.0) > 0)
        raise ConfigError(f"{names.get('workers', 'workers')} x ({describe(workers[0])}) cannot be placed: the Ray "
                          f"cluster has {have} (fits {count} worker(s)); {hint}")


def concurrent(bundles: list[dict[str, float]], totals: dict[str, float]) -> int:
    """Trials the cluster's totals hold at once, by every resource a trial asks for (at least 1)."""
    need: dict[str, float] = {}
    for bundle in bundles:
        for k, v in bundle.items():
            need[k] = need.get(k, 0.0) + v
    counts = [int(totals.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]  # 1 GPU / 0.1 is 10
    return max(1, min(counts, default=1))
