"""Stage 2 starts from stage 1: loaded experts reproduce the stage-1 models' logits exactly."""

from __future__ import annotations

import pytest
import torch

from i2m2_ray.errors import CheckpointError
from i2m2_ray.models import build_model, init_from_stage1, stage1_variants
from i2m2_ray.train.epoch import nll
from tests.models.helpers import av_manifest, grid_manifest, random_inputs, random_labels


def trained_stage1(manifest, variant: str, seed: int):
    """A stage-1 model after a few SGD steps (so BN statistics and weights differ from init)."""
    torch.manual_seed(seed)
    model = build_model(manifest, variant)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        loss = nll(model(random_inputs(manifest, 8, seed=step)).log_probs, random_labels(manifest, 8, step), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize(("kind", "variant"), [("av", "intra"), ("av", "i2m2:lf"), ("av", "i2m2:lrtf"),
                                                ("grid", "i2m2:early")])
def test_loading_stage1_reproduces_each_stage1_models_logits(tmp_path, kind, variant):
    manifest = av_manifest() if kind == "av" else grid_manifest("multilabel")
    mods = list(manifest.modalities)
    sources, stage1 = {}, {}
    for i, (expert, source_variant) in enumerate(stage1_variants(variant, mods).items()):
        stage1[expert] = trained_stage1(manifest, source_variant, seed=10 + i)
        sources[expert] = tmp_path / f"{expert}.pt"
        torch.save(stage1[expert].state_dict(), sources[expert])
    torch.manual_seed(99)
    model = build_model(manifest, variant).eval()
    init_from_stage1(model, sources)
    x = random_inputs(manifest, 5, seed=42)
    with torch.no_grad():
        out = model(x)
        for expert, source in stage1.items():
            want = source(x).expert_logits[expert]
            assert torch.equal(out.expert_logits[expert], want), expert


def test_missing_key_is_named(tmp_path):
    manifest = av_manifest()
    state = build_model(manifest, "unimodal:image").state_dict()
    del state["experts.image.head.net.2.bias"]
    torch.save(state, tmp_path / "image.pt")
    with pytest.raises(CheckpointError, match=r"missing key experts\.image\.head\.net\.2\.bias"):
        init_from_stage1(build_model(manifest, "intra"), {"image": tmp_path / "image.pt"})


def test_mismatched_shape_is_named(tmp_path):
    manifest = av_manifest()
    other = build_model(av_manifest(classes=10), "unimodal:audio").state_dict()
    torch.save(other, tmp_path / "audio.pt")
    with pytest.raises(CheckpointError, match=r"experts\.audio\.head\.net\.2\.weight has shape \[10, 100\]"):
        init_from_stage1(build_model(manifest, "i2m2:lf"), {"audio": tmp_path / "audio.pt"})


def test_wrong_stage1_model_is_rejected(tmp_path):
    manifest = av_manifest()
    torch.save(build_model(manifest, "unimodal:image").state_dict(), tmp_path / "image.pt")
    with pytest.raises(CheckpointError, match="no keys under 'experts.inter.'"):
        init_from_stage1(build_model(manifest, "i2m2:lf"), {"inter": tmp_path / "image.pt"})


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": build_model(av_manifest(), "unimodal:image")}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        init_from_stage1(build_model(av_manifest(), "intra"), {"image": path})
