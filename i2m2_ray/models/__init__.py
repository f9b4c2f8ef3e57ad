"""Model library: encoders, fusions, the product-of-experts combiner and the variant builder."""

from i2m2_ray.models.builder import (
    EncoderConfig,
    FrontEndConfig,
    ModelConfig,
    Variant,
    build_model,
    parse_variant,
    stage1_variants,
)
from i2m2_ray.models.init import init_from_stage1, load_expert, read_state_dict
from i2m2_ray.models.poe import ModelOutput, ProductOfExperts, modality_dropout_keep, product_of_experts

__all__ = [
    "EncoderConfig", "FrontEndConfig", "ModelConfig", "ModelOutput", "ProductOfExperts", "Variant",
    "build_model", "init_from_stage1", "load_expert", "modality_dropout_keep", "parse_variant", "product_of_experts",
    "read_state_dict", "stage1_variants",
]
