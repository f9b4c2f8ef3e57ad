"""Initialise intra / I2M2 experts from trained stage-1 models (the paper's default protocol)."""

from __future__ import annotations

from pathlib import Path

import torch

from i2m2_ray.errors import CheckpointError
from i2m2_ray.models.poe import ProductOfExperts


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or the ``model`` entry of a training checkpoint; tensors only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: state dict not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot load with weights_only=True ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_expert(model: ProductOfExperts, expert: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``experts.<expert>.*`` from a stage-1 state dict; any missing, extra or mis-shaped key fails."""
    if expert not in model.experts:
        raise CheckpointError(f"{source}: model has no expert {expert!r} (has {', '.join(model.experts)})")
    prefix = f"experts.{expert}."
    target = model.experts[expert].state_dict()
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise CheckpointError(f"{source}: no keys under {prefix!r} (is it a stage-1 model for {expert!r}?)")
    for key, tensor in target.items():
        if key not in sub:
            raise CheckpointError(f"{source}: missing key {prefix}{key}")
        if sub[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source}: key {prefix}{key} has shape {list(sub[key].shape)}, model expects {list(tensor.shape)}")
    extra = sorted(set(sub) - set(target))
    if extra:
        raise CheckpointError(f"{source}: unexpected key {prefix}{extra[0]}")
    model.experts[expert].load_state_dict(sub, strict=True)


def init_from_stage1(model: ProductOfExperts, sources: dict[str, str | Path]) -> None:
    """``sources`` maps expert name (modality or ``inter``) to a stage-1 state dict file."""
    for expert, path in sources.items():
        load_expert(model, expert, read_state_dict(path), str(path))
