"""Classification metrics from log-probabilities: accuracy, balanced accuracy, AUROC, ECE, NLL.

Inputs are numpy arrays: ``log_probs`` (N, C) with ``labels`` (N,) for multiclass, or
(N, L, 2) with (N, L) 0/1 labels for multi-label tasks (one binary head per label).
"""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Binary AUROC via the Mann-Whitney U statistic with tie-averaged ranks; NaN if one class is absent."""
    positives = positives.astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Equal-width-bin ECE: the mean |accuracy - confidence| weighted by bin size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    recalls = [(pred[labels == c] == c).mean() for c in range(num_classes) if (labels == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def classification_metrics(log_probs: np.ndarray, labels: np.ndarray,
                           class_names: list[str] | None = None) -> dict[str, float]:
    """All metrics for one set of predictions; keys are stable names used in logs and tables."""
    log_probs = log_probs.astype(np.float64)
    probs = np.exp(log_probs)
    out: dict[str, float] = {}
    if log_probs.ndim == 2:
        n, k = log_probs.shape
        names = class_names or [str(c) for c in range(k)]
        pred = probs.argmax(axis=1)
        out["loss"] = float(-log_probs[np.arange(n), labels].mean())
        out["accuracy"] = float((pred == labels).mean())
        out["balanced_accuracy"] = balanced_accuracy(pred, labels, k)
        out["ece"] = expected_calibration_error(probs.max(axis=1), (pred == labels).astype(np.float64))
        per_class = [auroc(probs[:, c], labels == c) for c in range(k)]
        for name, value in zip(names, per_class):
            out[f"auroc/{name}"] = value
    else:
        n, heads, _ = log_probs.shape
        names = class_names or [str(h) for h in range(heads)]
        pos = probs[:, :, 1]
        pred = (pos > 0.5).astype(np.int64)
        out["loss"] = float(-np.take_along_axis(log_probs, labels[:, :, None], axis=2).mean())
        out["accuracy"] = float((pred == labels).mean())
        out["balanced_accuracy"] = float(np.nanmean(
            [balanced_accuracy(pred[:, h], labels[:, h], 2) for h in range(heads)]))
        conf = np.maximum(pos, 1.0 - pos).ravel()
        out["ece"] = expected_calibration_error(conf, (pred == labels).ravel().astype(np.float64))
        per_class = [auroc(pos[:, h], labels[:, h] == 1) for h in range(heads)]
        for name, value in zip(names, per_class):
            out[f"auroc/{name}"] = value
    finite = [v for v in per_class if not np.isnan(v)]
    out["auroc"] = float(np.mean(finite)) if finite else float("nan")
    return out


def predictive_entropy(log_probs: np.ndarray) -> float:
    """Mean entropy (nats) of the predictive distribution; per head, averaged, for multi-label."""
    return float(-(np.exp(log_probs) * log_probs).sum(axis=-1).mean())
