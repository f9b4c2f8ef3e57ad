"""The product-of-experts combiner: every variant is one of these over a different set of experts.

    log q(y | x) = log_softmax( sum_e logits_e(x) )

A unimodal or inter model is a product of one expert; intra is the product of the
unimodal experts; I2M2 adds the inter expert. For multi-label tasks logits are
(B, heads, 2) and the softmax is per head.
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

    def forward(self, inputs: dict[str, torch.Tensor], leave_out: frozenset[str] = frozenset()) -> ModelOutput:
        """``leave_out`` drops named experts at test time (the missing-modality analysis)."""
        logits = {name: expert(inputs) for name, expert in self.experts.items() if name not in leave_out}
        if not logits:
            raise ValueError(f"every expert was left out ({', '.join(leave_out)})")
        return ModelOutput(product_of_experts(list(logits.values())), logits)
