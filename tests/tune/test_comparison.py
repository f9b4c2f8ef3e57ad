"""Paired comparisons read the real final runs of the shared smoke experiment (two seeds): the difference
is exactly the mean of the per-seed test-accuracy differences the ledger records, the interval holds it,
swapping A and B mirrors everything, and a model against itself is "not significant"."""

from __future__ import annotations

import shutil

import pytest

from i2m2_ray.errors import ConfigError
from i2m2_ray.tune.analysis import missing_modality_table
from i2m2_ray.tune.comparison import A_BETTER, B_BETTER, NOT_SIGNIFICANT, comparison_table, parse_ref
from i2m2_ray.tune.state import ExperimentState


@pytest.fixture(scope="module")
def smoke(smoke_two_seeds):
    return smoke_two_seeds[0]


def _acc(exp, variant: str) -> dict[int, float]:
    return {r["seed"]: 100 * r["final"]["test/accuracy"] for r in ExperimentState(exp).final_runs()
            if r["variant"] == variant}


def test_parse_ref():
    assert parse_ref("i2m2:lf") == ("i2m2:lf", None, None)
    assert parse_ref("i2m2:lf@drop without image") == ("i2m2:lf", "drop", "image")


@pytest.mark.slow
def test_default_pairs_are_i2m2_against_each_baseline_with_the_ledgers_numbers(smoke):
    table = comparison_table(smoke)
    assert list(zip(table["A"], table["B"], strict=True)) == [
        ("i2m2:lf", "unimodal:image"), ("i2m2:lf", "unimodal:audio"), ("i2m2:lf", "inter:lf")]
    assert table["level"].to_list() == pytest.approx([1 - 0.05 / 3] * 3)  # Bonferroni over the three pairs
    a = _acc(smoke, "i2m2:lf")
    for row in table.iter_rows(named=True):
        b = _acc(smoke, row["B"])
        diffs = [a[s] - b[s] for s in sorted(a)]
        assert (row["seeds"], row["rows"]) == (2, 60)
        assert row["accuracy_diff_pts"] == pytest.approx(sum(diffs) / 2, abs=1e-9)
        assert row["per_seed"] == " / ".join(f"{d:+.2f}" for d in diffs)
        assert row["a_wins"] == f"{sum(d > 0 for d in diffs)}/2"
        assert row["low"] <= row["accuracy_diff_pts"] <= row["high"]
        expected = A_BETTER if row["low"] > 0 else B_BETTER if row["high"] < 0 else NOT_SIGNIFICANT
        assert row["verdict"] == expected


@pytest.mark.slow
def test_swapped_pair_mirrors_and_a_model_against_its_copy_is_not_significant(smoke, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke, copy)
    table = comparison_table(smoke, [("i2m2:lf", "inter:lf"), ("inter:lf", "i2m2:lf"), ("i2m2:lf", "i2m2:lf@copy")],
                             others={"copy": copy})
    ab, ba, same = table.iter_rows(named=True)
    assert ba["accuracy_diff_pts"] == pytest.approx(-ab["accuracy_diff_pts"], abs=1e-9)
    assert (ba["low"], ba["high"]) == pytest.approx((-ab["high"], -ab["low"]), abs=1e-9)
    assert (same["accuracy_diff_pts"], same["low"], same["high"], same["loglik_diff"]) == (0, 0, 0, 0)
    assert same["verdict"] == NOT_SIGNIFICANT and same["a_wins"] == "0/2"
    with pytest.raises(ConfigError, match="no experiment labelled 'nope'"):
        comparison_table(smoke, [("i2m2:lf@nope", "inter:lf")])


@pytest.mark.slow
def test_without_a_modality_scores_as_the_missing_modality_table(smoke):
    table = comparison_table(smoke, [("i2m2:lf without image", "unimodal:audio")])
    row = table.row(0, named=True)
    missing = missing_modality_table(smoke, "accuracy").filter(missing="image").row(0, named=True)
    assert missing["unimodal"] == "unimodal:audio"
    expected = 100 * (missing["accuracy_mean"] - missing["unimodal_accuracy_mean"])
    assert row["accuracy_diff_pts"] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ConfigError, match="unimodal:audio without image: not a modality it can do without"):
        comparison_table(smoke, [("unimodal:audio without image", "inter:lf")])
