"""From (dataset manifest, variant name, model config) to a ``ProductOfExperts``.

Variant names: ``unimodal:<modality>``, ``intra``, ``inter:<fusion>``, ``i2m2:<fusion>``
with fusion in ``lf`` (late), ``lrtf`` (low-rank tensor), ``early`` (stacked channels).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from i2m2_ray.data.format import Manifest, ModalitySpec
from i2m2_ray.errors import ConfigError
from i2m2_ray.models.encoders import (
    AudioFrontEnd,
    LeNet,
    MLPEncoder,
    MLPHead,
    PreActResNet18,
    WaveformEncoder,
    lenet_layers_for,
)
from i2m2_ray.models.fusion import (
    EarlyFusion,
    LateFusion,
    LowRankTensorFusion,
    TensorFusionExpert,
    UnimodalExpert,
)
from i2m2_ray.models.poe import ProductOfExperts

FUSIONS = ("lf", "lrtf", "early")
INTER = "inter"
MAX_WIDTH = 65536  # widths beyond this are typos, not models
MAX_PARAMETERS = 2_000_000_000  # a model past this does not fit the memory of one worker
CPU_CHECK_PARAMETERS = 50_000_000  # check_buildable runs models up to this size (200 MB) for real


@dataclass
class EncoderConfig:
    """``arch``: auto picks LeNet for grids and waveforms (ResNet for grids >= 128 px), MLP for features."""

    arch: str = "auto"
    # LeNet extra blocks; None derives it from the input size
    layers: int | None = field(default=None, metadata={"ge": 1, "le": 16})
    hidden: int = field(default=256, metadata={"ge": 1, "le": MAX_WIDTH})  # MLP encoder width
    out_dim: int = field(default=128, metadata={"ge": 1, "le": MAX_WIDTH})  # MLP encoder output

    def validate(self, where: str = "") -> None:
        if self.arch not in ("auto", "lenet", "resnet18", "mlp"):
            raise ConfigError(f"{where}.arch: unknown encoder {self.arch!r} (auto, lenet, resnet18, mlp)")


@dataclass
class FrontEndConfig:
    """Waveform -> spectrogram settings; None takes the dataset's hint from its manifest."""

    n_fft: int | None = field(default=None, metadata={"ge": 2, "le": 2**16})
    hop_length: int | None = field(default=None, metadata={"ge": 1, "le": 2**16})
    log: bool = True
    normalize: bool = True
    freq_mask: int = field(default=0, metadata={"ge": 0})  # SpecAugment mask widths (training only)
    time_mask: int = field(default=0, metadata={"ge": 0})


@dataclass
class ModelConfig:
    # LeNet base channels of unimodal experts (paper: 3) and inside inter models (paper: 6)
    unimodal_channels: int = field(default=3, metadata={"ge": 1, "le": 1024})
    inter_channels: int = field(default=6, metadata={"ge": 1, "le": 1024})
    hidden: int = field(default=100, metadata={"ge": 1, "le": MAX_WIDTH})  # head MLP width
    lrtf_rank: int = field(default=40, metadata={"ge": 1, "le": 4096})
    lrtf_out: int = field(default=120, metadata={"ge": 1, "le": MAX_WIDTH})
    modalities: list[str] | None = None  # subset of the dataset's modalities; None = all
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)


@dataclass(frozen=True)
class Variant:
    family: str  # unimodal | intra | inter | i2m2
    arg: str | None  # modality for unimodal, fusion for inter/i2m2

    def __str__(self) -> str:
        return self.family if self.arg is None else f"{self.family}:{self.arg}"


def parse_variant(name: str, modalities: list[str] | tuple[str, ...]) -> Variant:
    """Check a variant name against the dataset's modalities; errors list what is valid."""
    family, _, arg = str(name).partition(":")
    valid = [f"unimodal:{m}" for m in modalities] + ["intra"] + [f"{f}:{x}" for f in ("inter", "i2m2") for x in FUSIONS]
    if family == "unimodal":
        if arg not in modalities:
            raise ConfigError(f"variant {name!r}: unknown modality {arg!r} (dataset has {', '.join(modalities)})")
        return Variant("unimodal", arg)
    if family == "intra" and not arg:
        return Variant("intra", None)
    if family in ("inter", "i2m2") and arg in FUSIONS:
        return Variant(family, arg)
    raise ConfigError(f"unknown variant {name!r} (valid: {', '.join(valid)})")


def _spatial(spec: ModalitySpec, cfg: ModelConfig) -> tuple[int, int, int]:
    if spec.kind == "waveform":
        n_fft = cfg.frontend.n_fft or spec.extra.get("n_fft", 254)
        hop = cfg.frontend.hop_length or spec.extra.get("hop_length", n_fft // 2)
        return (1, n_fft // 2 + 1, spec.shape[0] // hop + 1)
    return spec.model_shape()  # type: ignore[return-value]


def build_encoder(name: str, spec: ModalitySpec, cfg: ModelConfig, channels: int,
                  in_channels: int | None = None) -> nn.Module:
    """One modality's encoder; ``channels`` is the LeNet base width (unimodal 3, inter 6)."""
    enc_cfg = cfg.encoders.get(name, EncoderConfig())
    if spec.kind == "features":
        if enc_cfg.arch not in ("auto", "mlp"):
            raise ConfigError(f"model.encoders.{name}.arch: feature vectors need 'mlp', got {enc_cfg.arch!r}")
        in_dim = 1
        for d in spec.shape:
            in_dim *= d
        return MLPEncoder(in_dim, enc_cfg.hidden, enc_cfg.out_dim)
    c, h, w = _spatial(spec, cfg)
    c = in_channels or c
    arch = enc_cfg.arch
    if arch == "mlp":
        raise ConfigError(f"model.encoders.{name}.arch: 'mlp' is for feature vectors, {name!r} is a {spec.kind}")
    if arch == "auto":
        arch = "resnet18" if min(h, w) >= 128 and spec.kind == "image" else "lenet"
    if arch == "resnet18":
        encoder: nn.Module = PreActResNet18(c)
    else:
        encoder = LeNet(c, channels, enc_cfg.layers or lenet_layers_for(h, w))
    if spec.kind == "waveform":
        fe = cfg.frontend
        n_fft = fe.n_fft or spec.extra.get("n_fft", 254)
        hop = fe.hop_length or spec.extra.get("hop_length", n_fft // 2)
        encoder = WaveformEncoder(AudioFrontEnd(n_fft, hop, fe.log, fe.normalize, fe.freq_mask, fe.time_mask), encoder)
    return encoder


def _inter_expert(variant: Variant, manifest: Manifest, mods: list[str], cfg: ModelConfig) -> nn.Module:
    fusion = variant.arg
    if len(mods) < 2:
        raise ConfigError(f"variant '{variant}': inter-modality fusion needs at least two modalities, "
                          f"the model has {', '.join(mods)}")
    k, heads = manifest.num_classes, manifest.num_heads
    if fusion == "early":
        shapes = {m: _spatial(manifest.modalities[m], cfg) for m in mods}
        grids = {s[1:] for s in shapes.values()}
        if len(grids) != 1 or any(manifest.modalities[m].kind == "features" for m in mods):
            detail = ", ".join(f"{m} is {tuple(s)}" if manifest.modalities[m].kind != "features"
                               else f"{m} is a feature vector" for m, s in shapes.items())
            raise ConfigError(f"variant '{variant}': early fusion stacks modalities as channels, so they must "
                              f"share one grid; {detail}")
        waves = [m for m in mods if manifest.modalities[m].kind == "waveform"]
        if waves:  # the front end turns one waveform into a spectrogram; stacked raw audio has no grid
            raise ConfigError(f"variant '{variant}': early fusion stacks stored grids as channels, and "
                              f"{', '.join(waves)} {'is a' if len(waves) == 1 else 'are'} raw waveform"
                              f"{'s' if len(waves) > 1 else ''} (use lf or lrtf fusion)")
        in_ch = sum(s[0] for s in shapes.values())
        encoder = build_encoder(mods[0], manifest.modalities[mods[0]], cfg, cfg.inter_channels, in_channels=in_ch)
        return EarlyFusion(mods, encoder, MLPHead(encoder.out_dim, cfg.hidden, k, heads))
    encoders = {m: build_encoder(m, manifest.modalities[m], cfg, cfg.inter_channels) for m in mods}
    dims = [e.out_dim for e in encoders.values()]
    if fusion == "lf":
        return LateFusion(encoders, MLPHead(sum(dims), cfg.hidden, k, heads))
    fusion_layer = LowRankTensorFusion(dims, cfg.lrtf_out, cfg.lrtf_rank)
    return TensorFusionExpert(encoders, fusion_layer, MLPHead(cfg.lrtf_out, cfg.hidden, k, heads))


def _unimodal_expert(m: str, manifest: Manifest, cfg: ModelConfig) -> UnimodalExpert:
    encoder = build_encoder(m, manifest.modalities[m], cfg, cfg.unimodal_channels)
    return UnimodalExpert(m, encoder, MLPHead(encoder.out_dim, cfg.hidden, manifest.num_classes, manifest.num_heads))


def model_modalities(manifest: Manifest, cfg: ModelConfig) -> list[str]:
    """The modalities the model reads; every modality named in the model config must exist."""
    have = ", ".join(manifest.modalities)
    mods = list(cfg.modalities or manifest.modalities)
    for m in mods:
        if m not in manifest.modalities:
            raise ConfigError(f"model.modalities: unknown modality {m!r} (dataset has {have})")
        if mods.count(m) > 1:
            raise ConfigError(f"model.modalities: {m!r} is listed twice")
    for m in cfg.encoders:
        if m not in manifest.modalities:
            raise ConfigError(f"model.encoders.{m}: unknown modality {m!r} (dataset has {have})")
    return mods


def build_model(manifest: Manifest, variant: str | Variant, cfg: ModelConfig | None = None) -> ProductOfExperts:
    """The one builder for every variant: experts are named by modality, plus ``inter``."""
    cfg = cfg or ModelConfig()
    mods = model_modalities(manifest, cfg)
    v = variant if isinstance(variant, Variant) else parse_variant(variant, mods)
    experts: dict[str, nn.Module] = {}
    if v.family == "unimodal":
        experts[v.arg] = _unimodal_expert(v.arg, manifest, cfg)  # type: ignore[index]
    if v.family in ("intra", "i2m2"):
        if v.family == "intra" and len(mods) < 2:
            raise ConfigError(f"intra needs at least two modalities, dataset has {', '.join(mods)}")
        experts.update({m: _unimodal_expert(m, manifest, cfg) for m in mods})
    if v.family in ("inter", "i2m2"):
        experts[INTER] = _inter_expert(v, manifest, mods, cfg)
    return ProductOfExperts(experts)


def check_buildable(manifest: Manifest, variant: str, cfg: ModelConfig) -> None:
    """Fail with one line, before Ray or any trial starts, if ``variant`` cannot train on this dataset.

    The model is built on the meta device (no memory, no weights) to count its parameters, then, if
    small (``CPU_CHECK_PARAMETERS``; larger ones stay on the meta device), on the CPU, and one 2-row
    batch of the dataset's shapes goes through it, so every failure a real build or first step would
    hit (shapes that do not stack or pool, front-end settings longer than the audio, widths that do
    not fit) is caught. A meta-device forward imports ~890 modules of torch's meta kernels: 1.8 s and
    170 MB of RSS in every process that checks (each trial, the training CLI).
    """
    mods = model_modalities(manifest, cfg)
    v = parse_variant(variant, mods)
    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(manifest, v, cfg).parameters())
        if params > MAX_PARAMETERS:
            raise ConfigError(f"variant '{variant}': {params:,} parameters, more than {MAX_PARAMETERS:,}; "
                              "lower model.hidden, lrtf_rank, lrtf_out or the channels")
        # fork_rng: the caller's seeded draws stay as they were
        on_meta = torch.device("meta") if params > CPU_CHECK_PARAMETERS else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), torch.no_grad(), on_meta:
            model = build_model(manifest, v, cfg)
            model.eval()  # SpecAugment masks (training only) need real values
            batch = {m: torch.zeros(2, *manifest.modalities[m].model_shape()) for m in model.modalities}
            out = model(batch).log_probs
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any build or forward failure is a config the dataset cannot take
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"variant '{variant}': cannot be built for dataset {manifest.name!r} with this "
                          f"model config ({reason})") from None
    want = (2, manifest.num_classes) if manifest.num_heads is None else (2, manifest.num_heads, 2)
    if tuple(out.shape) != want:
        raise ConfigError(f"variant '{variant}': output shape {tuple(out.shape)}, expected {want}")


def stage1_variants(variant: str | Variant, modalities: list[str]) -> dict[str, str]:
    """Which stage-1 model each expert of an intra / I2M2 model is initialised from."""
    v = variant if isinstance(variant, Variant) else parse_variant(variant, modalities)
    if v.family not in ("intra", "i2m2"):
        return {}
    out = {m: f"unimodal:{m}" for m in modalities}
    if v.family == "i2m2":
        out[INTER] = f"inter:{v.arg}"
    return out
