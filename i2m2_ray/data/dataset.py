"""Where a run's dataset lives: a prepared directory, or the built-in one generated once and cached.

The cache key covers every generator knob and the generator version, so a changed knob or a
changed generator never reuses stale data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from i2m2_ray.errors import DataError

if TYPE_CHECKING:
    from i2m2_ray.train.config import DatasetConfig


def cache_root(cfg: DatasetConfig) -> Path:
    """``dataset.cache_dir``, else ``$I2M2_CACHE``, else ``~/.cache/i2m2_ray``."""
    return Path(cfg.cache_dir or os.environ.get("I2M2_CACHE") or Path.home() / ".cache" / "i2m2_ray").expanduser()


def stream_cache_dir(cfg: DatasetConfig) -> Path | None:
    """Where a streamed split's decoded blocks are kept on each node (``None``: ``stream_cache`` is off)."""
    return cache_root(cfg) / "stream" if cfg.stream_cache else None


def resolve_dataset(cfg: DatasetConfig) -> Path:
    """A prepared dataset directory; the built-in one is generated once per knob setting and cached."""
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        if not path.is_dir():
            raise DataError(f"dataset.path: {path} is not a directory")
        return path
    from i2m2_ray.data.synthetic import GENERATOR_VERSION, generate

    knobs = {**asdict(cfg.builtin), "generator_version": GENERATOR_VERSION}
    key = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root(cfg) / f"builtin-{key}"
    if not (path / "manifest.json").is_file():
        generate(cfg.builtin, path, exist_ok=True)  # a concurrent writer's complete dataset is kept
    return path
