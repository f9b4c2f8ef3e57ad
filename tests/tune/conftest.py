"""Fixtures shared by the tune tests."""

from __future__ import annotations

import pytest

from i2m2_ray.tune.experiment import load_experiment
from i2m2_ray.tune.runner import run_experiment
from tests.tune.procs import SMOKE_EXPERIMENT

SMOKE_TWO_SEEDS = ["final.seeds=[0,1]"]  # two seeds: the table has a spread, and seed chains can be compared


@pytest.fixture(scope="session")
def smoke_two_seeds(ray_local, tmp_path_factory):
    """ONE real smoke experiment (both stages, two final seeds; about 1.5 min here) for every module that
    only reads it; tests that change an experiment work on copies of its ledger, or leave it as they found it."""
    out = tmp_path_factory.mktemp("smoke") / "exp"
    return out, run_experiment(load_experiment(SMOKE_EXPERIMENT, [f"output_dir={out}", *SMOKE_TWO_SEEDS]))
