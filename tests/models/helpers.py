"""Manifests for model tests: shapes only, no data needed to build a model."""

from __future__ import annotations

import torch

from i2m2_ray.data.format import Manifest, ModalitySpec


def feature_manifest(n_modalities: int, task: str = "multiclass", classes: int = 5, dim: int = 12) -> Manifest:
    mods = {f"m{i}": ModalitySpec(kind="features", column=f"m{i}", shape=[dim + i]) for i in range(n_modalities)}
    names = [f"c{i}" for i in range(classes)]
    return Manifest(name="t", task=task, classes=names, modalities=mods, splits={})


def grid_manifest(task: str = "multilabel", size: int = 16) -> Manifest:
    """Two modalities on one grid (like MRI magnitude + phase): every fusion, early included, applies."""
    mods = {m: ModalitySpec(kind="image", column=m, shape=[size, size]) for m in ("magnitude", "phase")}
    classes = ["other", "meniscus_tear", "acl", "cartilage"] if task == "multilabel" else ["a", "b", "c"]
    return Manifest(name="t", task=task, classes=classes, modalities=mods, splits={})


def av_manifest(classes: int = 4) -> Manifest:
    """Image + raw waveform, as the built-in dataset (and AV-MNIST with raw audio) has."""
    mods = {
        "image": ModalitySpec(kind="image", column="image", shape=[28, 28]),
        "audio": ModalitySpec(kind="waveform", column="audio", shape=[2000], sample_rate=8000,
                              extra={"n_fft": 126, "hop_length": 32}),
    }
    return Manifest(name="t", task="multiclass", classes=[str(i) for i in range(classes)], modalities=mods, splits={})


def random_inputs(manifest: Manifest, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, *spec.model_shape(), generator=gen) for name, spec in manifest.modalities.items()}


def random_labels(manifest: Manifest, batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    if manifest.task == "multiclass":
        return torch.randint(0, manifest.num_classes, (batch,), generator=gen)
    return torch.randint(0, 2, (batch, len(manifest.classes)), generator=gen)
