"""One epoch's work: a training pass, an evaluation pass, and the loss both share.

Pure functions of a model and an iterable of batches, so the loop, the benches and the
analysis code all run the same steps (torch and numpy only).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from i2m2_ray.data.format import Manifest
from i2m2_ray.models.poe import modality_dropout_keep
from i2m2_ray.train.metrics import classification_metrics
from i2m2_ray.train.session import unwrap

# On the CPU an evaluation batch goes through the model this many rows at a time: the conv activations
# of 256 AV-MNIST spectrograms are a 0.26 GB transient (0.07 GB at 64), for no speed-up on a CPU.
CPU_EVAL_CHUNK = 64


def class_weights(labels: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """Inverse-frequency weights: (C,) for multiclass, (L, 2) for multi-label heads."""
    if manifest.task == "multiclass":
        counts = torch.bincount(labels, minlength=manifest.num_classes).float().clamp(min=1)
        return counts.sum() / (len(counts) * counts)
    pos = labels.float().sum(dim=0).clamp(min=1)
    neg = (len(labels) - labels.float().sum(dim=0)).clamp(min=1)
    return torch.stack([len(labels) / (2 * neg), len(labels) / (2 * pos)], dim=1)


def nll(log_probs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """One cross-entropy on the combined output; per head (then averaged) for multi-label."""
    if log_probs.dim() == 2:
        return F.nll_loss(log_probs, labels, weight=weights)
    heads = log_probs.shape[1]
    losses = [F.nll_loss(log_probs[:, h], labels[:, h], weight=None if weights is None else weights[h])
              for h in range(heads)]
    return torch.stack(losses).mean()


def to_device(inputs: dict[str, torch.Tensor], labels: torch.Tensor, device: torch.device):
    if device.type == "cpu":
        return inputs, labels
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}, labels.to(device, non_blocking=True)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches, weights: torch.Tensor | None,
                grad_clip: float | None, device: torch.device, modality_dropout: float = 0.0,
                generator: torch.Generator | None = None) -> tuple[float, int]:
    """One pass over the training batches; returns (mean loss, samples).

    ``modality_dropout`` > 0: rows lose a modality (and its experts) with that probability, drawn
    from ``generator`` (seeded by the caller) so the run stays a function of its seed."""
    model.train()
    poe = unwrap(model)
    total = torch.zeros((), device=device)
    seen = 0
    use_bf16 = device.type == "cuda"
    for inputs, labels in batches:
        inputs, labels = to_device(inputs, labels, device)
        keep = None
        if modality_dropout > 0:
            keep = modality_dropout_keep(poe, len(labels), modality_dropout, generator or torch.Generator())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(inputs) if keep is None else model(inputs, keep=keep)
        loss = nll(out.log_probs.float(), labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += loss.detach() * len(labels)
        seen += len(labels)
    return float(total) / max(seen, 1), seen


@torch.no_grad()
def predict(model: nn.Module, batches, device: torch.device, leave_out: frozenset[str] = frozenset(),
            missing: frozenset[str] = frozenset()) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Combined log-probs, each expert's own log-probs, and labels, as numpy arrays; ``leave_out`` drops
    experts, ``missing`` drops modalities (inputs and every expert that reads them)."""
    model.eval()
    combined, experts, labels_all = [], {}, []
    use_bf16 = device.type == "cuda"
    chunk = CPU_EVAL_CHUNK if device.type == "cpu" else None
    for inputs, labels in batches:
        inputs, labels = to_device(inputs, labels, device)
        for start in range(0, len(labels), chunk or max(len(labels), 1)):
            part = {k: v[start : start + chunk] if chunk else v for k, v in inputs.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = unwrap(model)(part, leave_out=leave_out, missing=missing)
            combined.append(out.log_probs.float().cpu())
            for name, logits in out.expert_logits.items():
                experts.setdefault(name, []).append(F.log_softmax(logits.float(), dim=-1).cpu())
        labels_all.append(labels.cpu())
    return (torch.cat(combined).numpy(), {k: torch.cat(v).numpy() for k, v in experts.items()},
            torch.cat(labels_all).numpy())


def evaluate(model: nn.Module, batches, device: torch.device, manifest: Manifest, prefix: str,
             leave_out: frozenset[str] = frozenset(),
             missing: frozenset[str] = frozenset()) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics of the combined model under ``prefix/``, and of each expert under ``expert/<name>/``."""
    log_probs, expert_lp, labels = predict(model, batches, device, leave_out, missing)
    metrics = {f"{prefix}/{k}": v for k, v in classification_metrics(log_probs, labels, manifest.classes).items()}
    if len(expert_lp) > 1:
        expert_prefix = "expert" if prefix == "val" else f"{prefix}/expert"
        for name, lp in expert_lp.items():
            for k, v in classification_metrics(lp, labels, manifest.classes).items():
                metrics[f"{expert_prefix}/{name}/{k}"] = v
    return metrics, log_probs, labels
