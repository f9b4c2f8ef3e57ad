"""Is inter-modality dependency detectable? The joint (inter) model against intra, row by row on test.

The joint model sees every input, so its predictive entropy falls below each unimodal model's even
when the modalities are independent given the label; what separates the two dependencies is whether
the joint model beats intra, the product of the unimodal experts, on the same test rows. This module
measures that gap in accuracy and in log-likelihood with a paired bootstrap interval (numpy only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DETECTED, NOT_DETECTED = "detected", "not detected"


def row_scores(log_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per test row: correct (0/1) and log q(y | x); averaged over the heads for multi-label."""
    log_probs = log_probs.astype(np.float64)
    if log_probs.ndim == 2:
        rows = np.arange(len(labels))
        return (log_probs.argmax(axis=1) == labels).astype(np.float64), log_probs[rows, labels]
    correct = (log_probs.argmax(axis=2) == labels).astype(np.float64).mean(axis=1)
    return correct, np.take_along_axis(log_probs, labels[:, :, None], axis=2)[:, :, 0].mean(axis=1)


def product_log_probs(log_probs: list[np.ndarray]) -> np.ndarray:
    """The normalised product of models given as log-probabilities (log_softmax of their sum)."""
    total = np.sum(log_probs, axis=0)
    top = total.max(axis=-1, keepdims=True)
    return total - (top + np.log(np.exp(total - top).sum(axis=-1, keepdims=True)))


def paired_bootstrap(diff: np.ndarray, resamples: int, seed: int, level: float) -> tuple[float, float, float]:
    """Mean of the per-row differences and its percentile interval: rows are resampled with replacement,
    each row keeping both models' scores (paired)."""
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # bounded memory for large test splits
        idx = rng.integers(0, len(diff), (min(256, resamples - start), len(diff)))
        means[start:start + len(idx)] = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)


@dataclass
class Gap:
    """joint minus baseline, per measure: (mean, low, high) over test rows; verdict for the joint model."""

    accuracy: tuple[float, float, float]
    log_likelihood: tuple[float, float, float]
    verdict: str


def dependency_gap(baseline: list[np.ndarray], joint: list[np.ndarray], labels: np.ndarray, resamples: int = 2000,
                   seed: int = 0, level: float = 0.95) -> Gap:
    """The joint-minus-baseline gap in test accuracy and log-likelihood, with paired bootstrap intervals.

    ``baseline`` and ``joint`` hold one log-prob array per seed's model, over the same test rows; each
    row's score is averaged over the seeds' models first, so the interval is over test rows for these
    trained models (seed-to-seed variation of the training is not inside it).

    Verdict ``detected`` when the accuracy interval excludes 0 in the joint model's favour and the
    log-likelihood interval does not exclude it in the baseline's. Accuracy decides because it does not
    depend on calibration: on data with no signal for intra, an overfit intra loses log-likelihood to a
    joint model that learned nothing but is less overconfident, which is no evidence of interaction.
    ``level`` applies to each interval (callers correct it for the number of intervals they read).
    """
    def scores(models: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        per_model = [row_scores(lp, labels) for lp in models]
        return np.mean([c for c, _ in per_model], axis=0), np.mean([ll for _, ll in per_model], axis=0)

    (acc_b, ll_b), (acc_j, ll_j) = scores(baseline), scores(joint)
    acc = paired_bootstrap(acc_j - acc_b, resamples, seed, level)
    ll = paired_bootstrap(ll_j - ll_b, resamples, seed + 1, level)
    return Gap(acc, ll, DETECTED if acc[1] > 0 and ll[2] >= 0 else NOT_DETECTED)
