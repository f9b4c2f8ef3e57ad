"""Shared fixtures: small built-in datasets, generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from i2m2_ray.data.synthetic import SyntheticConfig, generate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("I2M2_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def dataset_factory(tmp_path_factory):
    """Build (and cache for the session) a built-in dataset for given generator knobs."""
    made: dict[tuple, Path] = {}

    def make(**knobs) -> Path:
        cfg = SyntheticConfig(**{"train_size": 400, "val_size": 120, "test_size": 120, **knobs})
        key = tuple(sorted(vars(cfg).items()))
        if key not in made:
            made[key] = generate(cfg, tmp_path_factory.mktemp("builtin") / "data")
        return made[key]

    return make


@pytest.fixture(scope="session")
def small_dataset(dataset_factory) -> Path:
    return dataset_factory()
