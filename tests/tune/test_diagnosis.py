"""The dependency diagnosis decides: on the built-in dataset's corners, inter-modality dependency is
"not detected" with intra-only signal and "detected" with interaction-only signal.

Real final runs (the project's training loop on generated data) of intra and inter LF per corner,
recorded in a ledger as the experiment's final phase records them; the diagnosis reads that ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from i2m2_ray.data.format import load_manifest
from i2m2_ray.train import load_train_config, train
from i2m2_ray.tune.analysis import dependency_table, dependency_verdict, verdict_line
from i2m2_ray.tune.diagnosis import DETECTED, NOT_DETECTED, dependency_gap, paired_bootstrap
from i2m2_ray.tune.experiment import load_experiment
from i2m2_ray.tune.results import bayes_accuracy, render_markdown
from i2m2_ray.tune.state import FINAL

# Two classes: the interaction is then an XOR of two symbols, which inter LF learns from 600 rows in
# 3 epochs (four classes need about 1,500 rows and 10 epochs); chance is 50 %.
ROWS = {"num_classes": 2, "train_size": 600, "val_size": 150, "test_size": 300}
CORNERS = {"intra-only": {"intra_strength": 0.8, "inter_strength": 0.0},
           "interaction-only": {"intra_strength": 0.0, "inter_strength": 1.0}}


def _experiment(root: Path, dataset: Path) -> Path:
    runs = []
    for variant in ("intra", "inter:lf"):
        run_dir = root / variant.replace(":", "-")
        cfg = load_train_config(None, [f"run_dir={run_dir}", f"dataset.path={dataset}", f"variant={variant}",
                                       "tensorboard=false", "epochs=6", "patience=null", "optim.lr=0.05",
                                       "optim.momentum=0.9", "keep_checkpoints=1", "threads=1"])
        runs.append({"variant": variant, "seed": 0, "trial_dir": str(run_dir), "final": train(cfg, console=False),
                     "error": None})
    exp = root / "exp"
    exp.mkdir()
    (exp / "state.json").write_text(json.dumps({"phases": {FINAL: {"runs": runs, "wall_s": 1.0}}}))
    return exp


@pytest.fixture(scope="module", params=list(CORNERS))
def corner(request, dataset_factory, tmp_path_factory):
    dataset = dataset_factory(**CORNERS[request.param], **ROWS)
    return request.param, _experiment(tmp_path_factory.mktemp(request.param), dataset)


@pytest.mark.slow
def test_verdict_on_the_corners(corner):
    name, exp = corner
    verdict = dependency_verdict(exp)
    row = verdict.row(0, named=True)
    assert (row["joint"], row["baseline"], row["seeds"], row["rows"]) == ("inter:lf", "intra", 1, ROWS["test_size"])
    assert row["accuracy_low"] <= row["accuracy_gap"] <= row["accuracy_high"]
    if name == "interaction-only":  # intra stays at chance, inter LF learns (a + b) mod 2
        assert row["verdict"] == DETECTED and row["accuracy_low"] > 0, row
        assert verdict_line(verdict).startswith("inter-modality dependency: detected (inter:lf beats intra")
    else:
        assert row["verdict"] == NOT_DETECTED and row["accuracy_low"] <= 0, row
        assert verdict_line(verdict).startswith("inter-modality dependency: not detected")


@pytest.mark.slow
def test_entropy_table_has_intra_and_each_models_calibration(corner):
    _, exp = corner
    table = dependency_table(exp)
    assert table["model"].to_list() == ["intra", "inter:lf"]
    finals = {r["variant"]: r["final"] for r in json.loads((exp / "state.json").read_text())["phases"][FINAL]["runs"]}
    for row in table.iter_rows(named=True):
        final = finals[row["model"]]
        assert row["ece"] == pytest.approx(final["test/ece"], abs=1e-12)
        assert row["accuracy"] == pytest.approx(final["test/accuracy"], abs=1e-12)
        assert row["log_likelihood"] == pytest.approx(-final["test/loss"], abs=1e-9)
        assert row["label_entropy"] == pytest.approx(np.log(2), abs=0.01)  # 2 balanced classes


def test_paired_bootstrap_is_seeded_and_pairs_rows():
    rng = np.random.default_rng(0)
    diff = rng.normal(0.1, 1.0, 500)
    assert paired_bootstrap(diff, 2000, 7, 0.95) == paired_bootstrap(diff, 2000, 7, 0.95)
    mean, low, high = paired_bootstrap(diff, 2000, 7, 0.95)
    assert mean == pytest.approx(diff.mean()) and low < mean < high
    assert high - low == pytest.approx(2 * 1.96 * diff.std() / np.sqrt(500), rel=0.1)  # normal theory
    # Accuracy decides; log-likelihood alone (calibration) does not, but vetoes when it favours the baseline.
    labels = rng.integers(0, 4, 400)
    rows = np.arange(400)
    base = np.log(np.full((400, 4), 0.1))
    base[rows, labels] = np.log(0.7)
    calibrated = base.copy()
    calibrated[rows, labels] = np.log(0.75)  # same argmax, higher likelihood
    assert dependency_gap([base], [calibrated], labels).verdict == NOT_DETECTED
    wrong = base.copy()
    wrong[rows[:200], labels[:200]] = np.log(0.05)  # base errs on half of the rows
    gap = dependency_gap([wrong], [base], labels)
    assert gap.verdict == DETECTED and gap.accuracy[0] == pytest.approx(0.5) and gap.accuracy[1] > 0.4
    overconfident = np.log(np.full((400, 4), 1e-6))
    overconfident[rows[:300], labels[:300]] = 0.0  # right on 300 rows, sure of it
    overconfident[rows[300:], (labels[300:] + 1) % 4] = 0.0  # sure and wrong on the rest
    gap = dependency_gap([wrong], [overconfident], labels)
    assert gap.accuracy[1] > 0 and gap.log_likelihood[2] < 0  # more accurate, far less likely
    assert gap.verdict == NOT_DETECTED  # the likelihood vetoes
    assert dependency_gap([base], [base], labels).verdict == NOT_DETECTED


def _table(bayes: float | None) -> pl.DataFrame:
    row = {"variant": "i2m2:lf", "stage": 2, "val_accuracy": 0.6, "test_accuracy_mean": 0.58,
           "test_accuracy_std": 0.01, "seeds": 2, "lr": 0.01, "trials": 3, "failed": 0, "epochs": 20,
           "wall_s": 30.0, "status": "done", "bayes_accuracy": bayes}
    return pl.DataFrame([row], schema_overrides={"bayes_accuracy": pl.Float64})


def test_table_states_the_bayes_ceiling_and_each_gap(small_dataset, tmp_path):
    exp = load_experiment(None, [f"output_dir={tmp_path}", f"dataset.path={small_dataset}"])
    assert bayes_accuracy(exp) == load_manifest(small_dataset).bayes_accuracy == pytest.approx(0.671875)
    markdown = render_markdown(_table(0.671875))
    header, _, row = markdown.splitlines()[:3]
    assert "| test accuracy % (mean ± std) | to Bayes (pts) | seeds |" in header
    assert "| 58.00 ± 1.00 | -9.19 | 2 |" in row  # 58.00 - 67.19
    assert markdown.splitlines()[-1].startswith("Bayes-optimal test accuracy of this dataset (from its manifest): "
                                                "67.19 %")
    assert "Bayes" not in render_markdown(_table(None))  # real datasets: no ceiling known
