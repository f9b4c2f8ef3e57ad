"""Experts: modules that map the whole input dict to class logits.

A unimodal expert reads one modality; the inter-modality experts (late, low-rank tensor
and early fusion) read several and model their interaction.
"""

from __future__ import annotations

import torch
from torch import nn

from i2m2_ray.models.encoders import MLPHead


class UnimodalExpert(nn.Module):
    """f_m(x_m): an encoder over one modality and an MLP head."""

    def __init__(self, modality: str, encoder: nn.Module, head: MLPHead) -> None:
        super().__init__()
        self.modality = modality
        self.modalities = (modality,)
        self.encoder = encoder
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(inputs[self.modality]))


class LateFusion(nn.Module):
    """Per-modality encoders, features concatenated, MLP head."""

    def __init__(self, encoders: dict[str, nn.Module], head: MLPHead) -> None:
        super().__init__()
        self.modalities = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = [self.encoders[m](inputs[m]) for m in self.modalities]
        return self.head(torch.cat(feats, dim=1))


class LowRankTensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al. 2018) with every factor a registered parameter.

    Each modality's feature vector gets a constant 1 appended, is projected by ``rank``
    factors to ``out_dim``, the projections multiply elementwise across modalities, and a
    learned weighted sum over the rank plus a bias gives the fused vector. (MultiBench kept
    the factors in a Python list, so they were never trained; here they are.)
    """

    def __init__(self, in_dims: list[int], out_dim: int, rank: int) -> None:
        super().__init__()
        self.factors = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(rank, d + 1, out_dim))) for d in in_dims
        )
        self.fusion_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)))
        self.fusion_bias = nn.Parameter(torch.zeros(1, out_dim))
        self.out_dim = out_dim

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        product = None
        for x, factor in zip(feats, self.factors):
            ones = torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
            proj = torch.matmul(torch.cat([ones, x], dim=1), factor)  # (rank, B, out)
            product = proj if product is None else product * proj
        fused = torch.matmul(self.fusion_weights, product.permute(1, 0, 2)).squeeze(1)
        return fused + self.fusion_bias


class TensorFusionExpert(nn.Module):
    """Per-modality encoders -> low-rank tensor fusion -> MLP head."""

    def __init__(self, encoders: dict[str, nn.Module], fusion: LowRankTensorFusion, head: MLPHead) -> None:
        super().__init__()
        self.modalities = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.fusion([self.encoders[m](inputs[m]) for m in self.modalities]))


class EarlyFusion(nn.Module):
    """Modalities that share a grid (MRI magnitude + phase) stacked as channels of one network."""

    def __init__(self, modalities: list[str], encoder: nn.Module, head: MLPHead) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.encoder = encoder
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(torch.cat([inputs[m] for m in self.modalities], dim=1)))
