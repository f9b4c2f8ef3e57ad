"""The combiner is exactly the formula: log_softmax of the summed expert logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from i2m2_ray.models import build_model, product_of_experts
from tests.models.helpers import av_manifest, feature_manifest, grid_manifest, random_inputs


@pytest.mark.parametrize("n_modalities", [2, 3])
@pytest.mark.parametrize("variant", ["intra", "i2m2:lf", "i2m2:lrtf"])
def test_combined_output_is_log_softmax_of_summed_logits(n_modalities, variant):
    manifest = feature_manifest(n_modalities)
    torch.manual_seed(0)
    model = build_model(manifest, variant).eval()
    out = model(random_inputs(manifest, 6))
    expected_experts = n_modalities + (1 if variant.startswith("i2m2") else 0)
    assert len(out.expert_logits) == expected_experts
    summed = sum(out.expert_logits.values())
    torch.testing.assert_close(out.log_probs, F.log_softmax(summed, dim=-1), rtol=0, atol=1e-6)
    # Equivalently: each expert's log_softmax summed, renormalised with logsumexp.
    per_expert = sum(F.log_softmax(v, dim=-1) for v in out.expert_logits.values())
    torch.testing.assert_close(out.log_probs, per_expert - per_expert.logsumexp(dim=-1, keepdim=True),
                               rtol=0, atol=1e-5)
    assert torch.allclose(out.log_probs.exp().sum(-1), torch.ones(6), atol=1e-5)


@pytest.mark.parametrize("variant", ["intra", "i2m2:lf", "i2m2:early"])
def test_multilabel_product_is_taken_per_head(variant):
    manifest = grid_manifest("multilabel")
    torch.manual_seed(0)
    model = build_model(manifest, variant).eval()
    out = model(random_inputs(manifest, 3))
    assert out.log_probs.shape == (3, 4, 2)
    for head in range(4):
        summed = sum(v[:, head] for v in out.expert_logits.values())
        torch.testing.assert_close(out.log_probs[:, head], F.log_softmax(summed, dim=-1), rtol=0, atol=1e-6)


def test_product_of_experts_against_hand_computation():
    a = torch.tensor([[1.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 2.0, 0.0]])
    expected = torch.log(torch.softmax(torch.tensor([[1.0, 2.0, -1.0]]), -1))
    torch.testing.assert_close(product_of_experts([a, b]), expected)


def test_leaving_an_expert_out_removes_its_term():
    manifest = av_manifest()
    torch.manual_seed(0)
    model = build_model(manifest, "i2m2:lf").eval()
    x = random_inputs(manifest, 4)
    full = model(x)
    partial = model(x, leave_out=frozenset({"audio"}))
    assert set(partial.expert_logits) == {"image", "inter"}
    expected = F.log_softmax(full.expert_logits["image"] + full.expert_logits["inter"], dim=-1)
    torch.testing.assert_close(partial.log_probs, expected)
