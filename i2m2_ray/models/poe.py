"""The product-of-experts combiner: every variant is one of these over a different set of experts.

    log q(y | x) = log_softmax( sum_e logits_e(x) )

A unimodal or inter model is a product of one expert; intra is the product of the
unimodal experts; I2M2 adds the inter expert. Without a modality, a model is the product of the
experts that do not read it (I2M2 without the image = the product of the other unimodal experts).
For multi-label tasks logits are (B, heads, 2) and the softmax is per head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def product_of_experts(logits: list[torch.Tensor]) -> torch.Tensor:
    """Normalised product of experts: log_softmax of the summed logits over the last axis."""
    return F.log_softmax(torch.stack(logits).sum(dim=0), dim=-1)


@dataclass
class ModelOutput:
    log_probs: torch.Tensor  # combined log q(y|x): (B, C) or (B, heads, 2)
    expert_logits: dict[str, torch.Tensor]


class ProductOfExperts(nn.Module):
    """Named experts (modality names, or ``inter``) whose logits are summed and renormalised."""

    def __init__(self, experts: dict[str, nn.Module]) -> None:
        super().__init__()
        if not experts:
            raise ValueError("a product of experts needs at least one expert")
        self.experts = nn.ModuleDict(experts)

    @property
    def modalities(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for expert in self.experts.values():
            seen.update(dict.fromkeys(expert.modalities))
        return tuple(seen)

    def experts_reading(self, modalities: frozenset[str] | set[str]) -> frozenset[str]:
        """The experts that need any of ``modalities``: with those inputs absent they cannot run."""
        return frozenset(n for n, e in self.experts.items() if set(e.modalities) & set(modalities))

    def droppable(self) -> tuple[str, ...]:
        """Modalities whose loss still leaves an expert (none for unimodal and inter models)."""
        return tuple(m for m in self.modalities if len(self.experts_reading({m})) < len(self.experts))

    def forward(self, inputs: dict[str, torch.Tensor], leave_out: frozenset[str] = frozenset(),
                missing: frozenset[str] = frozenset(), keep: dict[str, torch.Tensor] | None = None) -> ModelOutput:
        """``leave_out`` drops named experts (expert ablation); ``missing`` drops modalities: their inputs
        are not read and every expert that needs them is left out (a modality missing at test time).
        ``keep`` (expert -> (B,) 0/1 mask) removes experts per row: a masked row's product is that of
        its remaining experts (modality dropout in training)."""
        leave_out = leave_out | self.experts_reading(missing)
        inputs = {m: x for m, x in inputs.items() if m not in missing}
        logits = {name: expert(inputs) for name, expert in self.experts.items() if name not in leave_out}
        if not logits:
            raise ValueError(f"every expert was left out ({', '.join(sorted(leave_out))})")
        if keep is None:
            return ModelOutput(product_of_experts(list(logits.values())), logits)
        terms = [z * keep[name].to(device=z.device, dtype=z.dtype).view(-1, *[1] * (z.dim() - 1)) if name in keep else z
                 for name, z in logits.items()]
        return ModelOutput(F.log_softmax(torch.stack(terms).sum(dim=0), dim=-1), logits)


def modality_dropout_keep(model: ProductOfExperts, batch: int, p: float,
                          generator: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Per-row expert masks for modality dropout: each row, with probability ``p``, loses one modality
    drawn uniformly from those whose loss leaves an expert, and with it every expert that reads it.

    Per row rather than per batch: every expert runs on every step, so DDP / FSDP see a gradient for
    every parameter (a dropped expert per batch would leave parameters unused on some steps), and each
    step still trains the full product on the other rows. Draws come from ``generator`` only.
    """
    mods = model.droppable()
    if p <= 0 or not mods:
        return None
    dropped = torch.rand(batch, generator=generator) < p
    which = torch.randint(len(mods), (batch,), generator=generator)
    return {name: ~(dropped & torch.isin(which, torch.tensor([i for i, m in enumerate(mods)
                                                              if m in expert.modalities], dtype=torch.long)))
            for name, expert in model.experts.items()}
