"""Raw inputs of the AV-MNIST rebuild and their signal processing: MNIST IDX files, FSDD WAV
recordings, PCA degradation, coloured noise, the reference power spectrogram, running statistics."""

from __future__ import annotations

import gzip
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from i2m2_ray.errors import DataError

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
