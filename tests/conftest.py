"""Shared fixtures: small built-in datasets generated once per test session, and one local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from i2m2_ray.data.synthetic import SyntheticConfig, generate

REPO = Path(__file__).resolve().parents[1]
# Train's controller polls workers every 2 s by default; 0.5 s saves ~4 s per TorchTrainer run. Set before
# any Ray process starts so the controller inherits it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Worker processes start slowly when the 2 CPUs are busy; Train's default start timeout is 60 s.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
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


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole session (never `ray stop`: it would kill other users' Ray).

    2 CPUs: with fit() called from the test process the driver takes none, so 2 workers x 1 CPU fit.
    """
    import ray

    from i2m2_ray.cluster import start_local_ray

    started = not ray.is_initialized()
    if started:
        start_local_ray(num_cpus=2, log_to_driver=False)  # loopback only, as the CLIs start theirs
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()  # only the cluster this session started
