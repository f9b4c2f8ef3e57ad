"""AV-MNIST: convert the MultiBench npy layout, or rebuild it from raw MNIST + FSDD.

Rebuild recipe, faithful to the original except where the original is
unavailable or leaky, and every such choice is recorded in the manifest:
- image: MNIST digits PCA-projected onto ``pca_components`` components (fit separately on train and
  test, as the source does) and reconstructed without adding the mean back;
- audio: for each image, the next FSDD recording of the same digit (cycled through a seeded order),
  mixed at weight 0.009 with noise. ESC-50 is not available here, so the noise is coloured noise
  generated from the seed (white, pink or brown), peak-normalised like a loaded clip;
- 112x112 power spectral density (scipy ``spectrogram`` semantics: boxcar window, nfft 223,
  constant detrend, density scaling, one-sided, 8 kHz, no log) with 112 evenly spaced frames;
- FSDD test speaker (``yweweler``) used only for test rows; validation is by default
  speaker-disjoint (one train speaker held out), because the reference "last rows" split shares
  recordings with train and its accuracy says little (both are available).
"""

from __future__ import annotations

import gzip
import re
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from i2m2_ray.config import check_fields
from i2m2_ray.data.format import Manifest, ModalitySpec, tensor_array, waveform_array
from i2m2_ray.data.writer import DatasetWriter, Progress, check_output
from i2m2_ray.errors import ConfigError, DataError

SAMPLE_RATE = 8000
NFFT = 223
FRAMES = 112
CHUNK = 2048
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}


# ---------------------------------------------------------------- raw readers

def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST IDX file (gzip or plain): big-endian magic, uint32 sizes, uint8 data."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: MNIST file not found")
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable IDX file ({exc})") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path}: not a uint8 IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {dims.tolist()} but holds {len(raw) - start} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def find_mnist(mnist_dir: str | Path) -> dict[str, Path]:
    """The four MNIST files, with either ``-idx3-ubyte`` or ``.idx3-ubyte`` naming, gzip or not."""
    mnist_dir = Path(mnist_dir).expanduser()
    out = {}
    for key, stem in (("train_images", "train-images"), ("train_labels", "train-labels"),
                      ("test_images", "t10k-images"), ("test_labels", "t10k-labels")):
        hits = sorted(p for p in mnist_dir.glob(f"{stem}*") if "ubyte" in p.name)
        if not hits:
            raise DataError(f"{mnist_dir}: missing MNIST file {stem}-idx*-ubyte[.gz]")
        out[key] = hits[0]
    return out


def read_wav(path: Path) -> np.ndarray:
    """Mono 16-bit PCM WAV at 8 kHz as int16 (standard-library ``wave``: no extra dependency)."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise DataError(f"{path}: expected mono 16-bit PCM, got {w.getnchannels()} channel(s) "
                                f"of {8 * w.getsampwidth()} bits")
            if w.getframerate() != SAMPLE_RATE:
                raise DataError(f"{path}: sample rate {w.getframerate()} Hz, expected {SAMPLE_RATE}")
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    except (wave.Error, EOFError, OSError) as exc:
        raise DataError(f"{path}: unreadable WAV ({exc})") from None
    if data.size < NFFT + FRAMES:
        raise DataError(f"{path}: only {data.size} samples, need at least {NFFT + FRAMES} for 112 frames")
    return data


@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str
    index: int


def list_fsdd(fsdd_dir: str | Path) -> list[Recording]:
    """FSDD recordings ``{digit}_{speaker}_{index}.wav`` (in ``recordings/`` or directly in the folder)."""
    root = Path(fsdd_dir).expanduser()
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    recs = []
    for p in sorted(folder.glob("*.wav")):
        m = FSDD_NAME.match(p.name)
        if m:
            recs.append(Recording(p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not recs:
        raise DataError(f"{folder}: no FSDD recordings named {{digit}}_{{speaker}}_{{index}}.wav")
    return sorted(recs, key=lambda r: (r.digit, r.speaker, r.index))


# ---------------------------------------------------------------- signal processing

class PCADegrader:
    """PCA fit on one split, then projection onto the top-k components without adding the mean back."""

    def __init__(self, images: np.ndarray, components: int) -> None:
        x = images.reshape(len(images), -1)
        d = x.shape[1]
        if not 1 <= components <= d:
            raise DataError(f"--pca-components must be in 1..{d}, got {components}")
        self.mean = np.zeros(d)
        cov = np.zeros((d, d))
        for s in range(0, len(x), 8192):
            chunk = x[s : s + 8192].astype(np.float64)
            self.mean += chunk.sum(axis=0)
        self.mean /= len(x)
        for s in range(0, len(x), 8192):
            chunk = x[s : s + 8192].astype(np.float64) - self.mean
            cov += chunk.T @ chunk
        evals, evecs = np.linalg.eigh(cov / max(len(x) - 1, 1))
        order = np.argsort(evals)[::-1]
        self.components = evecs[:, order[:components]]
        self.explained = float(evals[order[:components]].sum() / max(evals.sum(), 1e-12))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float64) - self.mean
        out = (x @ self.components) @ self.components.T
        return out.astype(np.float32).reshape(images.shape)


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """Noise with power ~ 1/f**beta (white 0, pink 1, brown 2), peak-normalised to 1."""
    if colour == "none":
        return np.zeros(n)
    white = rng.standard_normal(n)
    spec = np.fft.rfft(white)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec = spec / f ** (NOISE_EXPONENT[colour] / 2.0)
    spec[0] = 0.0
    out = np.fft.irfft(spec, n)
    peak = np.abs(out).max()
    return out / peak if peak > 0 else out


def frame_starts(n: int, nperseg: int, frames: int = FRAMES) -> np.ndarray:
    """``frames`` evenly spaced segment starts covering the clip (overlap varies by at most one sample)."""
    return np.round(np.linspace(0, n - nperseg, frames)).astype(np.int64)


def power_spectrogram(x: np.ndarray, fs: int = SAMPLE_RATE, nfft: int = NFFT, frames: int = FRAMES) -> np.ndarray:
    """(nfft//2+1, frames) one-sided PSD, as scipy.signal.spectrogram(window='boxcar', nfft=223,
    detrend='constant', scaling='density'); segment length min(nfft, len-frames+1)."""
    x = np.asarray(x, dtype=np.float64)
    nperseg = min(nfft, len(x) - frames + 1)
    idx = frame_starts(len(x), nperseg, frames)[:, None] + np.arange(nperseg)[None, :]
    seg = x[idx]
    seg = seg - seg.mean(axis=1, keepdims=True)
    psd = np.abs(np.fft.rfft(seg, n=nfft, axis=1)) ** 2 / (fs * nperseg)
    if nfft % 2:
        psd[:, 1:] *= 2.0
    else:
        psd[:, 1:-1] *= 2.0
    return psd.T.astype(np.float32)


# ---------------------------------------------------------------- shared helpers

class RunningStats:
    """Mean and std of every value seen (for the manifest's normalisation hints)."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        self.n += x.size
        self.s += float(x.sum())
        self.ss += float((x * x).sum())

    def as_dict(self) -> dict[str, float]:
        mean = self.s / max(self.n, 1)
        return {"mean": mean, "std": float(np.sqrt(max(self.ss / max(self.n, 1) - mean * mean, 0.0)))}


def _modalities(keep_waveform: bool, max_samples: int) -> dict[str, ModalitySpec]:
    mods = {
        "image": ModalitySpec(kind="image", column="image", shape=[28, 28], dtype="float32"),
        "audio": ModalitySpec(kind="spectrogram", column="audio", shape=[112, 112], dtype="float32",
                              sample_rate=SAMPLE_RATE,
                              extra={"front_end": "raw_psd", "log": False, "axes": ["frequency", "time"]}),
    }
    if keep_waveform:
        mods["waveform"] = ModalitySpec(kind="waveform", column="waveform", shape=[max_samples], dtype="int16",
                                        sample_rate=SAMPLE_RATE, extra={"n_fft": NFFT, "frames": FRAMES})
    return mods


# ---------------------------------------------------------------- rebuild from raw

@dataclass
class AVMNISTRawConfig:
    """Every knob of the rebuild; all of it lands in the manifest provenance."""

    pca_components: int = field(default=196, metadata={"ge": 1, "le": 784, "flag": "--pca-components"})
    noise: str = "pink"
    noise_weight: float = field(default=0.009, metadata={"ge": 0, "lt": 1, "flag": "--noise-weight"})
    seed: int = field(default=0, metadata={"ge": 0, "lt": 2**32, "flag": "--seed"})
    val_size: int = field(default=5000, metadata={"ge": 1, "flag": "--val-size"})
    val_split: str = "speaker"  # "speaker": one train speaker held out; "last_rows": reference split
    val_speaker: str | None = None  # default: first train speaker in sorted order
    test_speaker: str = "yweweler"
    # use only the first N MNIST train / test rows (small rebuilds)
    train_limit: int | None = field(default=None, metadata={"ge": 1, "flag": "--train-size"})
    test_limit: int | None = field(default=None, metadata={"ge": 1, "flag": "--test-size"})
    keep_waveform: bool = False

    def check(self) -> None:
        try:
            check_fields(self)
        except ConfigError as exc:
            raise DataError(str(exc)) from None
        if self.noise not in (*NOISE_EXPONENT, "none"):
            raise DataError(f"--noise must be one of white, pink, brown, none; got {self.noise!r}")
        if self.val_split not in ("speaker", "last_rows"):
            raise DataError(f"--val-split must be speaker or last_rows, got {self.val_split!r}")


def _pairing(labels: np.ndarray, recs: list[Recording], seed: int, salt: int, where: str) -> list[Recording]:
    """For each label in order, the next recording of that digit, cycling through a seeded order."""
    by_digit: dict[int, list[Recording]] = {d: [] for d in range(10)}
    for r in recs:
        by_digit[r.digit].append(r)
    rng = np.random.default_rng([seed, salt])
    orders = {}
    for d, lst in by_digit.items():
        if not lst and (labels == d).any():
            raise DataError(f"{where}: no FSDD recording of digit {d} for this split")
        orders[d] = [lst[i] for i in rng.permutation(len(lst))]
    counts = dict.fromkeys(range(10), 0)
    out = []
    for y in labels.tolist():
        out.append(orders[y][counts[y] % len(orders[y])])
        counts[y] += 1
    return out


def prepare_avmnist_raw(mnist_dir: str | Path, fsdd_dir: str | Path, out_dir: str | Path,
                        cfg: AVMNISTRawConfig | None = None, *, overwrite: bool = False,
                        progress: bool = False) -> Path:
    """Rebuild AV-MNIST into ``out_dir``; deterministic for ``cfg.seed``."""
    cfg = cfg or AVMNISTRawConfig()
    check_output(out_dir, overwrite)
    cfg.check()
    files = find_mnist(mnist_dir)
    train_x, train_y = read_idx(files["train_images"]), read_idx(files["train_labels"])
    test_x, test_y = read_idx(files["test_images"]), read_idx(files["test_labels"])
    for x, y, k in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{files[k + '_images']}: images {list(x.shape)} and labels {list(y.shape)} "
                            f"do not match (N, 28, 28) / (N,)")
    if cfg.train_limit:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
    if cfg.test_limit:
        test_x, test_y = test_x[: cfg.test_limit], test_y[: cfg.test_limit]
    if cfg.val_size >= len(train_x):
        raise DataError(f"--val-size {cfg.val_size} leaves no training rows (train has {len(train_x)})")

    recs = list_fsdd(fsdd_dir)
    speakers = sorted({r.speaker for r in recs})
    if cfg.test_speaker not in speakers:
        raise DataError(f"{fsdd_dir}: test speaker {cfg.test_speaker!r} not among FSDD speakers {speakers}")
    train_speakers = [s for s in speakers if s != cfg.test_speaker]
    val_speaker = None
    if cfg.val_split == "speaker":
        val_speaker = cfg.val_speaker or train_speakers[0]
        if val_speaker not in train_speakers:
            raise DataError(f"{fsdd_dir}: validation speaker {val_speaker!r} is not a train speaker {train_speakers}")
        if len(train_speakers) < 2:
            raise DataError(f"{fsdd_dir}: need two train speakers for a speaker-disjoint validation split")

    n_fit = len(train_x) - cfg.val_size
    pca_train, pca_test = PCADegrader(train_x, cfg.pca_components), PCADegrader(test_x, cfg.pca_components)
    where = str(fsdd_dir)
    if cfg.val_split == "speaker":
        tr_recs = [r for r in recs if r.speaker in train_speakers and r.speaker != val_speaker]
        va_recs = [r for r in recs if r.speaker == val_speaker]
        pairs_train = _pairing(train_y[:n_fit], tr_recs, cfg.seed, 1, where)
        pairs_val = _pairing(train_y[n_fit:], va_recs, cfg.seed, 2, where)
    else:
        pairs_all = _pairing(train_y, [r for r in recs if r.speaker in train_speakers], cfg.seed, 1, where)
        pairs_train, pairs_val = pairs_all[:n_fit], pairs_all[n_fit:]
    pairs_test = _pairing(test_y, [r for r in recs if r.speaker == cfg.test_speaker], cfg.seed, 3, where)
    used = {r.path for r in (*pairs_train, *pairs_val, *pairs_test)}
    wav_cache = {p: read_wav(p) for p in sorted(used)}
    max_samples = max(len(w) for w in wav_cache.values())

    plan = {
        "train": (train_x[:n_fit], train_y[:n_fit], pairs_train, pca_train, 0),
        "val": (train_x[n_fit:], train_y[n_fit:], pairs_val, pca_train, n_fit),
        "test": (test_x, test_y, pairs_test, pca_test, 0),
    }
    manifest = Manifest(
        name="avmnist",
        task="multiclass",
        classes=[str(i) for i in range(10)],
        modalities=_modalities(cfg.keep_waveform, max_samples),
        splits={},
        provenance={
            "source": "raw MNIST IDX + FSDD WAV (i2m2_ray.data.avmnist.prepare_avmnist_raw)",
            **asdict(cfg),
            "val_speaker": val_speaker,
            "train_speakers": [s for s in train_speakers if s != val_speaker],
            "validation": ("speaker-disjoint: validation audio from one held-out train speaker"
                           if cfg.val_split == "speaker" else
                           "reference: last val_size train rows (shares recordings with train; leaky)"),
            "pca": {"components": cfg.pca_components, "fit": "separately on train (incl. val rows) and test",
                    "mean_added_back": False, "explained_variance_train": pca_train.explained,
                    "explained_variance_test": pca_test.explained},
            "noise": {"replaces": "ESC-50 (not available)", "kind": f"{cfg.noise} coloured noise",
                      "power_law_exponent": NOISE_EXPONENT.get(cfg.noise), "peak_normalised": True,
                      "weight": cfg.noise_weight,
                      "generator": "numpy default_rng([seed, split, row]) white noise shaped in the rFFT domain"},
            "spectrogram": {"window": "boxcar", "nfft": NFFT, "frames": FRAMES, "sample_rate": SAMPLE_RATE,
                            "detrend": "constant", "scaling": "density", "log": False,
                            "segments": "min(nfft, len-111) samples, 112 evenly spaced starts"},
            "mnist_files": {k: p.name for k, p in files.items()},
        },
    )
    total = sum(len(v[0]) for v in plan.values())
    bar = Progress("prepare avmnist-raw", total, enabled=progress)
    img_stats, aud_stats = RunningStats(), RunningStats()
    with DatasetWriter(out_dir, manifest, overwrite=overwrite, row_group_size=256) as writer:
        for split_no, (split, (xs, ys, pairs, pca, base)) in enumerate(plan.items()):
            for s in range(0, len(xs), CHUNK):
                imgs = pca(xs[s : s + CHUNK])
                labels = ys[s : s + CHUNK]
                specs, clips = [], []
                for i, rec in enumerate(pairs[s : s + CHUNK]):
                    row = base + s + i
                    clean = wav_cache[rec.path].astype(np.float64) / 32768.0
                    noise = coloured_noise(np.random.default_rng([cfg.seed, split_no, row]), len(clean), cfg.noise)
                    mixed = clean + cfg.noise_weight * noise
                    specs.append(power_spectrogram(mixed))
                    if cfg.keep_waveform:
                        clips.append(np.clip(np.round(mixed * 32768.0), -32768, 32767).astype(np.int16))
                spec_arr = np.stack(specs)
                if split == "train":
                    img_stats.add(imgs)
                    aud_stats.add(spec_arr)
                chunk_pairs = pairs[s : s + CHUNK]
                cols = {
                    "sample_id": pa.array([f"{split}-{base + s + i:06d}" for i in range(len(imgs))]),
                    "image": tensor_array(imgs),
                    "audio": tensor_array(spec_arr),
                }
                if cfg.keep_waveform:
                    cols["waveform"] = waveform_array(clips)
                    cols["sample_rate"] = pa.array(np.full(len(clips), SAMPLE_RATE, dtype=np.int32))
                    cols["num_samples"] = pa.array(np.array([len(c) for c in clips], dtype=np.int32))
                cols["label"] = pa.array(labels.astype(np.int8))
                cols["mnist_index"] = pa.array(np.arange(base + s, base + s + len(imgs), dtype=np.int32))
                cols["fsdd_file"] = pa.array([r.path.name for r in chunk_pairs])
                cols["speaker"] = pa.array([r.speaker for r in chunk_pairs])
                writer.write(split, pa.table(cols))
                bar.update(len(imgs))
        manifest.modalities["image"].extra.update(img_stats.as_dict())
        manifest.modalities["audio"].extra.update(aud_stats.as_dict())
        out = writer.commit()
    bar.close()
    return out


# ---------------------------------------------------------------- MultiBench layout

def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing modality file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable npy ({str(exc).splitlines()[0]})") from None


def _checked_chunk(path: Path, arr: np.ndarray, s: int, e: int, shape: tuple[int, ...]) -> np.ndarray:
    chunk = np.asarray(arr[s:e])
    if not (np.issubdtype(chunk.dtype, np.floating) or np.issubdtype(chunk.dtype, np.integer)):
        raise DataError(f"{path}: array dtype {chunk.dtype} is not numeric")
    chunk = chunk.astype(np.float32).reshape(len(chunk), *shape)
    finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: column 'data' row {s + int(np.flatnonzero(~finite)[0])}: NaN or inf values")
    return chunk


def _labels(path: Path, arr: np.ndarray) -> np.ndarray:
    y = np.asarray(arr)
    if y.ndim != 1:
        raise DataError(f"{path}: labels must be 1-D, got shape {list(y.shape)}")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise DataError(f"{path}: column 'label' row {int(np.flatnonzero(bad)[0])}: non-integer label {y[bad][0]}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y > 9)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column 'label' row {i}: label {int(y[i])} out of range 0..9")
    return y


def prepare_avmnist(source: str | Path, out_dir: str | Path, *, val_size: int = 5000, overwrite: bool = False,
                    progress: bool = False) -> Path:
    """Convert the MultiBench npy layout (any float dtype, memory-mapped, chunked) to Parquet."""
    check_output(out_dir, overwrite)
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DataError(f"{source}: source directory not found")
    arrays = {}
    for part in ("train", "test"):
        lab_path = source / f"{part}_labels.npy"
        img_path, aud_path = source / "image" / f"{part}_data.npy", source / "audio" / f"{part}_data.npy"
        y = _labels(lab_path, _load_npy(lab_path))
        img, aud = _load_npy(img_path), _load_npy(aud_path)
        n = len(y)
        if img.shape[0] != n or int(np.prod(img.shape[1:])) != 784:
            raise DataError(f"{img_path}: shape {list(img.shape)}, expected ({n}, 784) or ({n}, 28, 28) "
                            f"to match {lab_path.name}")
        if tuple(aud.shape) != (n, 112, 112):
            raise DataError(f"{aud_path}: shape {list(aud.shape)}, expected ({n}, 112, 112) to match {lab_path.name}")
        arrays[part] = (y, img, aud, img_path, aud_path)
    n_train = len(arrays["train"][0])
    if not 1 <= val_size < n_train:
        raise DataError(f"--val-size {val_size} must be in 1..{n_train - 1} (train has {n_train} rows)")
    cut = n_train - val_size
    plan = {"train": ("train", 0, cut), "val": ("train", cut, n_train), "test": ("test", 0, len(arrays["test"][0]))}
    manifest = Manifest(
        name="avmnist",
        task="multiclass",
        classes=[str(i) for i in range(10)],
        modalities=_modalities(False, 1),
        splits={},
        provenance={
            "source": f"MultiBench npy layout ({source})",
            "val_split": "last_rows",
            "val_size": val_size,
            "validation": "reference: last val_size train rows (shares recordings with train; leaky)",
            "dtypes": {k: str(v[1].dtype) + "/" + str(v[2].dtype) for k, v in arrays.items()},
            "pca": {"components": "unknown (as distributed)"},
        },
    )
    bar = Progress("prepare avmnist", n_train + len(arrays["test"][0]), enabled=progress)
    img_stats, aud_stats = RunningStats(), RunningStats()
    with DatasetWriter(out_dir, manifest, overwrite=overwrite) as writer:
        for split, (part, lo, hi) in plan.items():
            y, img, aud, img_path, aud_path = arrays[part]
            for s in range(lo, hi, CHUNK):
                e = min(s + CHUNK, hi)
                imgs = _checked_chunk(img_path, img, s, e, (28, 28))
                auds = _checked_chunk(aud_path, aud, s, e, (112, 112))
                if split == "train":
                    img_stats.add(imgs)
                    aud_stats.add(auds)
                writer.write(split, pa.table({
                    "sample_id": pa.array([f"{part}-{i:06d}" for i in range(s, e)]),
                    "image": tensor_array(imgs),
                    "audio": tensor_array(auds),
                    "label": pa.array(y[s:e].astype(np.int8)),
                }))
                bar.update(e - s)
        manifest.modalities["image"].extra.update(img_stats.as_dict())
        manifest.modalities["audio"].extra.update(aud_stats.as_dict())
        out = writer.commit()
    bar.close()
    return out
