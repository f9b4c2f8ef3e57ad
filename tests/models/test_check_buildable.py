"""``check_buildable``: every variant a dataset cannot take fails with one line before any work starts,
and every variant it can take passes (the check must not refuse what trains)."""

from __future__ import annotations

import pytest
import torch

from i2m2_ray.data.format import Manifest, ModalitySpec
from i2m2_ray.errors import ConfigError
from i2m2_ray.models.builder import (
    FUSIONS,
    EncoderConfig,
    FrontEndConfig,
    ModelConfig,
    build_model,
    check_buildable,
)

from .helpers import av_manifest, feature_manifest, grid_manifest, random_inputs


def all_variants(manifest: Manifest) -> list[str]:
    mods = list(manifest.modalities)
    return [f"unimodal:{m}" for m in mods] + ["intra"] + [f"{f}:{x}" for f in ("inter", "i2m2") for x in FUSIONS]


def error_of(manifest: Manifest, variant: str, cfg: ModelConfig | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        check_buildable(manifest, variant, cfg or ModelConfig())
    return str(info.value)


@pytest.mark.parametrize("variant", all_variants(grid_manifest("multilabel")))
def test_every_variant_of_a_shared_grid_passes_and_really_trains(variant):
    manifest = grid_manifest("multilabel")
    check_buildable(manifest, variant, ModelConfig())
    out = build_model(manifest, variant)(random_inputs(manifest, 2))
    assert out.log_probs.shape == (2, 4, 2)


@pytest.mark.parametrize("variant", [v for v in all_variants(av_manifest()) if not v.endswith("early")])
def test_image_and_waveform_variants_pass(variant):
    check_buildable(av_manifest(), variant, ModelConfig())


@pytest.mark.parametrize("variant", ["inter:early", "i2m2:early"])
def test_early_fusion_of_different_shapes_names_both(variant):
    assert error_of(av_manifest(), variant) == (
        f"variant '{variant}': early fusion stacks modalities as channels, so they must share one grid; "
        "image is (1, 28, 28), audio is (1, 64, 63)")


def test_early_fusion_of_feature_vectors():
    assert error_of(feature_manifest(2), "inter:early") == (
        "variant 'inter:early': early fusion stacks modalities as channels, so they must share one grid; "
        "m0 is a feature vector, m1 is a feature vector")


def test_inter_needs_two_modalities():
    cfg = ModelConfig(modalities=["image"])
    assert error_of(av_manifest(), "inter:lf", cfg) == (
        "variant 'inter:lf': inter-modality fusion needs at least two modalities, the model has image")


@pytest.mark.parametrize(("variant", "cfg", "fragment"), [
    # an encoder that pools a 28x28 image below 1x1
    ("unimodal:image", ModelConfig(encoders={"image": EncoderConfig(layers=8)}), "Output size is too small"),
    ("i2m2:lf", ModelConfig(encoders={"image": EncoderConfig(layers=8)}), "Output size is too small"),
    # a front-end window longer than the audio
    ("unimodal:audio", ModelConfig(frontend=FrontEndConfig(n_fft=4096)), "Padding size should be less"),
    # a hop so long the spectrogram has one frame, too few for the pooling LeNet
    ("inter:lrtf", ModelConfig(frontend=FrontEndConfig(hop_length=4000)), "Output size is too small"),
])
def test_build_and_forward_failures_become_one_config_line(variant, cfg, fragment):
    message = error_of(av_manifest(), variant, cfg)
    assert message.startswith(f"variant '{variant}': cannot be built for dataset 't' with this model config (")
    assert fragment in message and "\n" not in message


def test_unknown_modality_under_model_encoders():
    cfg = ModelConfig(encoders={"imgae": EncoderConfig(layers=2)})
    assert error_of(av_manifest(), "unimodal:image", cfg) == (
        "model.encoders.imgae: unknown modality 'imgae' (dataset has image, audio)")


def test_wrong_encoder_for_the_modality_kind():
    cfg = ModelConfig(encoders={"image": EncoderConfig(arch="mlp")})
    assert error_of(av_manifest(), "unimodal:image", cfg) == (
        "model.encoders.image.arch: 'mlp' is for feature vectors, 'image' is a image")


def test_a_model_too_large_for_one_worker():
    cfg = ModelConfig(hidden=65536, lrtf_rank=4096, lrtf_out=65536)
    message = error_of(av_manifest(), "inter:lrtf", cfg)
    assert message.startswith("variant 'inter:lrtf': ") and "parameters, more than 2,000,000,000" in message


def test_unknown_variant_and_modality_subset():
    assert error_of(av_manifest(), "inter:xyz").startswith("unknown variant 'inter:xyz'")
    assert error_of(av_manifest(), "unimodal:image", ModelConfig(modalities=["image", "image"])) == (
        "model.modalities: 'image' is listed twice")


def test_check_leaves_no_real_tensors_and_default_device_untouched():
    check_buildable(av_manifest(), "i2m2:lf", ModelConfig())
    assert torch.empty(1).device.type == "cpu"
    with pytest.raises(ConfigError):
        check_buildable(av_manifest(), "inter:early", ModelConfig())
    assert torch.empty(1).device.type == "cpu"


def test_feature_and_waveform_only_datasets():
    wave = Manifest("w", "multiclass", ["a", "b"], {
        "left": ModalitySpec("waveform", "left", [1000], extra={"n_fft": 62, "hop_length": 32}),
        "right": ModalitySpec("waveform", "right", [1000], extra={"n_fft": 62, "hop_length": 32})}, {})
    for variant in [v for v in all_variants(wave) if not v.endswith("early")]:
        check_buildable(wave, variant, ModelConfig())
    assert error_of(wave, "i2m2:early") == ("variant 'i2m2:early': early fusion stacks stored grids as channels, "
                                            "and left, right are raw waveforms (use lf or lrtf fusion)")
    for variant in [v for v in all_variants(feature_manifest(3)) if not v.endswith("early")]:
        check_buildable(feature_manifest(3), variant, ModelConfig())
