"""The built-in dataset: an image and a raw-audio modality whose label dependence is dialled in.

Each sample has a label ``y`` and two latent symbols, ``a`` (drawn in the image as one
of K templates) and ``b`` (spoken as one of K tones). With probability
``inter_strength`` the sample is an *interaction* sample: ``a`` is uniform and
``b = (y - a) mod K``, so neither modality alone says anything about ``y`` but the pair
fixes it (the selection / XOR-style dependency of the I2M2 paper). Otherwise each
modality independently shows ``y`` with probability ``intra_strength`` and a uniform
symbol otherwise (intra-modality dependency, conditionally independent given ``y``).

The Bayes-optimal accuracy from the latents is computed exactly and stored in the
manifest; the rendering noise is low enough that the latents are recoverable, so it
is the ceiling a model can reach.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from i2m2_ray.config import check_fields
from i2m2_ray.data.format import Manifest, ModalitySpec, load_manifest, tensor_array, waveform_array
from i2m2_ray.data.writer import check_output, write_dataset
from i2m2_ray.errors import ConfigError, DataError

GENERATOR_VERSION = 2  # bump when the output for a given config changes (it keys the dataset cache)
MAX_ROWS = 1_000_000  # per split: the generator holds a split in memory


@dataclass
class SyntheticConfig:
    """Knobs of the built-in generator; every value lands in the manifest."""

    num_classes: int = field(default=4, metadata={"ge": 2, "le": 127})  # labels are stored as int8
    intra_strength: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    inter_strength: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    train_size: int = field(default=2000, metadata={"ge": 1, "le": MAX_ROWS})
    val_size: int = field(default=500, metadata={"ge": 1, "le": MAX_ROWS})
    test_size: int = field(default=500, metadata={"ge": 1, "le": MAX_ROWS})
    image_size: int = field(default=28, metadata={"ge": 4, "le": 512})  # LeNet pools it down to about 1x1
    image_noise: float = field(default=0.35, metadata={"ge": 0})
    sample_rate: int = field(default=8000, metadata={"ge": 1000, "le": 192000})  # tones span 300 Hz..0.4 rate
    # the audio front end's window is 62 samples: shorter clips cannot be framed
    max_samples: int = field(default=4000, metadata={"ge": 64, "le": 1_000_000})
    min_samples: int = field(default=3000, metadata={"ge": 1, "le": 1_000_000})
    audio_noise: float = field(default=0.3, metadata={"ge": 0})
    seed: int = field(default=0, metadata={"ge": 0, "lt": 2**32})

    def validate(self, where: str = "dataset.builtin") -> None:
        if self.min_samples > self.max_samples:
            raise ConfigError(f"{where}.min_samples: {self.min_samples} is more than max_samples={self.max_samples}")


def bayes_accuracy(num_classes: int, intra: float, inter: float) -> float:
    """Exact accuracy of the Bayes classifier that sees the latent symbols (a, b)."""
    k = num_classes
    y = np.arange(k)[:, None, None]
    a = np.arange(k)[None, :, None]
    b = np.arange(k)[None, None, :]
    p_intra = lambda s: intra * (s == y) + (1.0 - intra) / k  # noqa: E731
    joint = inter * ((a + b) % k == y) / k + (1.0 - inter) * p_intra(a) * p_intra(b)
    joint = joint / k  # uniform prior on y
    return float(joint.max(axis=0).sum())


def _latents(cfg: SyntheticConfig, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    k = cfg.num_classes
    y = rng.integers(0, k, n)
    interaction = rng.random(n) < cfg.inter_strength
    a_rand, b_rand = rng.integers(0, k, n), rng.integers(0, k, n)
    a = np.where(rng.random(n) < cfg.intra_strength, y, a_rand)
    b = np.where(rng.random(n) < cfg.intra_strength, y, b_rand)
    a = np.where(interaction, a_rand, a)
    b = np.where(interaction, (y - a_rand) % k, b)
    return y, a, b


def _templates(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """K smooth random patterns in [0, 1], one per image symbol."""
    s = cfg.image_size
    coarse = rng.random((cfg.num_classes, 7, 7))
    reps = -(-s // 7)
    big = np.kron(coarse, np.ones((reps, reps)))[:, :s, :s]
    kernel = np.ones(3) / 3.0
    for axis in (1, 2):
        big = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, big)
    big -= big.min(axis=(1, 2), keepdims=True)
    return big / big.max(axis=(1, 2), keepdims=True)


def _render_images(cfg: SyntheticConfig, symbols: np.ndarray, templates: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    n, s = len(symbols), cfg.image_size
    imgs = templates[symbols].copy()
    shifts = rng.integers(-2, 3, (n, 2))
    for i, (dy, dx) in enumerate(shifts):
        imgs[i] = np.roll(imgs[i], (int(dy), int(dx)), axis=(0, 1))
    imgs += cfg.image_noise * rng.standard_normal((n, s, s))
    return np.clip(imgs * 255.0, 0, 255).astype(np.uint8)


def _render_audio(cfg: SyntheticConfig, symbols: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """A tone per symbol (with a weaker octave), random phase, level and length, plus white noise."""
    freqs = np.linspace(300.0, 0.4 * cfg.sample_rate, cfg.num_classes)
    clips = []
    for sym in symbols:
        n = int(rng.integers(cfg.min_samples, cfg.max_samples + 1))
        t = np.arange(n) / cfg.sample_rate
        f = freqs[sym] * (1.0 + 0.02 * rng.standard_normal())
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * f * t + phase) + 0.3 * np.sin(4 * np.pi * f * t + phase)
        wave = rng.uniform(0.2, 0.6) * wave / 1.3 + cfg.audio_noise * 0.5 * rng.standard_normal(n)
        clips.append(np.clip(wave * 32767.0, -32768, 32767).astype(np.int16))
    return clips


def generate(cfg: SyntheticConfig, out_dir: str | Path, overwrite: bool = False, exist_ok: bool = False,
             where: str = "dataset.builtin") -> Path:
    """Write the built-in dataset to ``out_dir`` (Parquet + manifest); deterministic for ``cfg.seed``.

    ``overwrite`` replaces an existing dataset (never a directory that is not one). ``exist_ok`` is
    for caches: a complete dataset already there, or written meanwhile by a concurrent generator,
    is kept and returned.
    """
    check_fields(cfg, where)
    cfg.validate(where)
    out_dir = Path(out_dir).expanduser()
    if exist_ok and _complete(out_dir):
        return out_dir
    check_output(out_dir, overwrite)
    rng = np.random.default_rng(cfg.seed)
    templates = _templates(cfg, rng)
    tables = {}
    sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
    offset = 0
    for split, n in sizes.items():
        y, a, b = _latents(cfg, n, rng)
        images = _render_images(cfg, a, templates, rng)
        clips = _render_audio(cfg, b, rng)
        tables[split] = pa.table({
            "sample_id": pa.array([f"{split}-{offset + i:06d}" for i in range(n)]),
            "image": tensor_array(images),
            "audio": waveform_array(clips),
            "sample_rate": pa.array(np.full(n, cfg.sample_rate, dtype=np.int32)),
            "num_samples": pa.array(np.array([len(c) for c in clips], dtype=np.int32)),
            "label": pa.array(y.astype(np.int8)),
        })
        offset += n
    hop = max(1, cfg.max_samples // 31)  # 32 frames x 32 bins: tones stay far apart, encoders stay cheap
    manifest = Manifest(
        name="builtin",
        task="multiclass",
        classes=[str(i) for i in range(cfg.num_classes)],
        modalities={
            "image": ModalitySpec(kind="image", column="image", shape=[cfg.image_size, cfg.image_size],
                                  dtype="uint8", extra={"scale": 1.0 / 255.0}),
            "audio": ModalitySpec(kind="waveform", column="audio", shape=[cfg.max_samples], dtype="int16",
                                  sample_rate=cfg.sample_rate, extra={"n_fft": 62, "hop_length": hop}),
        },
        splits={},
        provenance={"generator": "i2m2_ray.data.synthetic", "generator_version": GENERATOR_VERSION, **asdict(cfg)},
        bayes_accuracy=bayes_accuracy(cfg.num_classes, cfg.intra_strength, cfg.inter_strength),
    )
    return write_dataset(out_dir, manifest, tables, overwrite=overwrite, exist_ok=exist_ok)


def _complete(out_dir: Path) -> bool:
    try:
        load_manifest(out_dir)
    except DataError:
        return False
    return True
