"""Metrics checked against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from i2m2_ray.train.metrics import auroc, balanced_accuracy, classification_metrics, expected_calibration_error


def brute_auroc(scores, positives):
    pos, neg = scores[positives], scores[~positives]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))


def test_auroc_undefined_without_both_classes():
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([True, True])))


def test_ece_of_a_calibrated_and_an_overconfident_predictor():
    conf = np.full(100, 0.8)
    assert expected_calibration_error(conf, (np.arange(100) < 80).astype(float)) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(10, 0.9), np.zeros(10)) == pytest.approx(0.9)


def test_balanced_accuracy_weights_classes_equally():
    labels = np.array([0] * 8 + [1] * 2)
    pred = np.zeros(10, dtype=int)
    assert balanced_accuracy(pred, labels, 2) == pytest.approx(0.5)


def test_multiclass_and_multilabel_metric_sets():
    lp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]]))
    m = classification_metrics(lp, np.array([0, 1, 2, 1]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.6, 0.4])))
    assert {"auroc/a", "auroc/b", "auroc/c", "ece", "balanced_accuracy"} <= set(m)
    ml = np.log(np.stack([np.array([[0.9, 0.1], [0.2, 0.8]])] * 2 + [np.array([[0.3, 0.7], [0.6, 0.4]])] * 2))
    y = np.array([[0, 1], [0, 1], [1, 0], [0, 0]])
    m = classification_metrics(ml, y, ["x", "y"])
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["auroc/x"] == pytest.approx(brute_auroc(np.exp(ml[:, 0, 1]), y[:, 0] == 1))
    assert m["auroc"] == pytest.approx((m["auroc/x"] + m["auroc/y"]) / 2)
