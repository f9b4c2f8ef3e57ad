"""Every variant builds, produces the right shapes, and trains every one of its parameters."""

from __future__ import annotations

import pytest
import torch

from i2m2_ray.errors import ConfigError
from i2m2_ray.models import build_model, parse_variant
from i2m2_ray.models.encoders import LeNet
from i2m2_ray.models.fusion import LowRankTensorFusion
from i2m2_ray.train.epoch import nll
from tests.models.helpers import av_manifest, feature_manifest, grid_manifest, random_inputs, random_labels

AV_VARIANTS = ["unimodal:image", "unimodal:audio", "intra", "inter:lf", "inter:lrtf", "i2m2:lf", "i2m2:lrtf"]
GRID_VARIANTS = ["unimodal:magnitude", "unimodal:phase", "intra", "inter:lf", "inter:lrtf", "inter:early",
                 "i2m2:lf", "i2m2:lrtf", "i2m2:early"]
CASES = ([("av", v) for v in AV_VARIANTS] + [("grid", v) for v in GRID_VARIANTS]
         + [("features3", v) for v in ("intra", "inter:lrtf", "i2m2:lrtf")])


def manifest_for(kind: str):
    return {"av": av_manifest(), "grid": grid_manifest("multilabel"), "features3": feature_manifest(3)}[kind]


@pytest.mark.parametrize(("kind", "variant"), CASES)
def test_every_parameter_gets_a_nonzero_gradient(kind, variant):
    manifest = manifest_for(kind)
    torch.manual_seed(0)
    model = build_model(manifest, variant).train()
    out = model(random_inputs(manifest, 8))
    nll(out.log_probs, random_labels(manifest, 8), None).backward()
    params = dict(model.named_parameters())
    assert params
    dead = [name for name, p in params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"{variant}: parameters without gradient: {dead}"


def test_lrtf_factors_are_registered_parameters():
    fusion = LowRankTensorFusion([48, 192], out_dim=120, rank=40)
    names = {n for n, _ in fusion.named_parameters()}
    assert names == {"factors.0", "factors.1", "fusion_weights", "fusion_bias"}
    assert fusion.factors[1].shape == (40, 193, 120)


@pytest.mark.parametrize(("channels", "layers", "size", "out_dim"),
                         [(3, 3, 28, 24), (6, 3, 28, 48), (3, 5, 112, 96), (6, 5, 112, 192)])
def test_lenet_feature_sizes_match_the_paper(channels, layers, size, out_dim):
    enc = LeNet(1, channels, layers)
    assert enc.out_dim == out_dim
    assert enc(torch.randn(2, 1, size, size)).shape == (2, out_dim)


def test_inter_lf_head_input_matches_avmnist_dimensions():
    """AV-MNIST shapes: inter encoders give 48 + 192 = 240 features into MLP(240, 100, 10)."""
    from i2m2_ray.data.format import Manifest, ModalitySpec

    manifest = Manifest("avmnist", "multiclass", [str(i) for i in range(10)], {
        "image": ModalitySpec("image", "image", [28, 28]),
        "audio": ModalitySpec("spectrogram", "audio", [112, 112])}, {})
    model = build_model(manifest, "inter:lf")
    assert model.experts["inter"].head.net[0].in_features == 240
    lrtf = build_model(manifest, "inter:lrtf").experts["inter"].fusion
    assert [f.shape[1] for f in lrtf.factors] == [49, 193]


def test_multiclass_and_multilabel_output_shapes():
    out = build_model(feature_manifest(2, classes=7), "i2m2:lf")(random_inputs(feature_manifest(2, classes=7), 3))
    assert out.log_probs.shape == (3, 7)
    grid = grid_manifest("multilabel")
    assert build_model(grid, "intra")(random_inputs(grid, 2)).log_probs.shape == (2, 4, 2)


@pytest.mark.parametrize(("name", "message"), [
    ("unimodal:text", "unknown modality 'text'"),
    ("fusion", "unknown variant 'fusion'"),
    ("inter:tensor", "unknown variant 'inter:tensor'"),
    ("intra:lf", "unknown variant 'intra:lf'"),
])
def test_bad_variant_names_fail_with_one_line(name, message):
    with pytest.raises(ConfigError) as info:
        parse_variant(name, ["image", "audio"])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_early_fusion_needs_a_shared_grid():
    with pytest.raises(ConfigError, match="must share one grid"):
        build_model(av_manifest(), "inter:early")
