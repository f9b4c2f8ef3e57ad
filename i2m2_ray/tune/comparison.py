"""Is model A better than model B? Paired differences on the same test rows, for the claims a table invites.

A table of means ± std over three seeds cannot say whether a 1-point gap is real. Here every comparison
is paired: both models are scored on the same test rows, the per-row difference is resampled (paired
bootstrap over rows, as the dependency verdict does), and the per-seed differences are listed beside it,
so a reader sees both the test-sample and the training-seed variation. A model is named by a reference:

- ``"i2m2:lf"``: the final runs of a variant of the main experiment;
- ``"i2m2:lf@scratch"``: the same variant in another experiment, given by label in ``others``;
- ``"i2m2:lf without image"``: with a modality missing at test time (its inputs unread, every expert that
  reads it dropped), as in the missing-modality table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from i2m2_ray.errors import ConfigError
from i2m2_ray.train.epoch import predict
from i2m2_ray.tune.analysis import CPU, _final_runs, _load_run, _split
from i2m2_ray.tune.diagnosis import dependency_gap, row_scores

A_BETTER, B_BETTER, NOT_SIGNIFICANT = "A better", "B better", "not significant"

_CACHE: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray]] = {}


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``"variant[@label][ without modality]"`` -> (variant, label, missing modality)."""
    head, _, missing = ref.partition(" without ")
    variant, _, label = head.partition("@")
    return variant.strip(), label.strip() or None, missing.strip() or None


def predictions(trial_dir: str | Path, missing: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A finished run's log-probs and labels on its test split (val when it has none), with ``missing``
    absent; kept per process, since every comparison of a run needs the same arrays."""
    key = (str(trial_dir), missing)
    if key not in _CACHE:
        cfg, model, data = _load_run(trial_dir)
        if missing is not None and missing not in model.droppable():
            raise ConfigError(f"{cfg.variant} without {missing}: not a modality it can do without "
                              f"({', '.join(model.droppable()) or 'none'})")
        drop = frozenset() if missing is None else frozenset({missing})
        log_probs, _, labels = predict(model, data.eval_batches(_split(data), cfg.eval_batch_size), CPU, missing=drop)
        _CACHE[key] = (log_probs, labels)
    return _CACHE[key]


def default_pairs(exp_dir: str | Path) -> list[tuple[str, str]]:
    """Every I2M2 variant against every other variant of the experiment (the table's headline claims)."""
    variants = list(dict.fromkeys(r["variant"] for r in _final_runs(exp_dir)))
    return [(a, b) for a in variants if a.startswith("i2m2") for b in variants if not b.startswith("i2m2")]


def comparison_table(exp_dir: str | Path, pairs: Sequence[tuple[str, str]] | None = None,
                     others: dict[str, str | Path] | None = None, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> pl.DataFrame | None:
    """A minus B per pair, in test accuracy (points) and mean log-likelihood, over the seeds both have.

    Each row's score is averaged over the seeds' models before the rows are resampled, so the interval
    covers the test sample for these trained models; ``per_seed`` and ``a_wins`` show the training-seed
    variation that the interval does not. Intervals are Bonferroni-corrected over the pairs, so the chance
    that any "better" verdict in the table is a false one stays below 1 - ``level``.
    """
    dirs: dict[str | None, str | Path] = {None: exp_dir, **(others or {})}
    runs: dict[str | None, dict[tuple[str, int], dict[str, Any]]] = {
        label: {(r["variant"], r["seed"]): r for r in _final_runs(d)} for label, d in dirs.items()}
    pairs = list(pairs) if pairs is not None else default_pairs(exp_dir)
    per_interval = 1.0 - (1.0 - level) / max(len(pairs), 1)

    def seeds_of(ref: str) -> dict[int, dict[str, Any]]:
        variant, label, _ = parse_ref(ref)
        if label not in runs:
            raise ConfigError(f"comparison {ref!r}: no experiment labelled {label!r} (have {sorted(map(str, runs))})")
        return {s: r for (v, s), r in runs[label].items() if v == variant}

    rows = []
    for a, b in pairs:
        runs_a, runs_b = seeds_of(a), seeds_of(b)
        seeds = sorted(set(runs_a) & set(runs_b))
        if not seeds:
            continue
        pa = [predictions(runs_a[s]["trial_dir"], parse_ref(a)[2]) for s in seeds]
        pb = [predictions(runs_b[s]["trial_dir"], parse_ref(b)[2]) for s in seeds]
        labels = pa[0][1]
        if any(not np.array_equal(p[1], labels) for p in pa + pb):
            raise ConfigError(f"comparison {a} vs {b}: the runs were not tested on the same rows")
        gap = dependency_gap([lp for lp, _ in pb], [lp for lp, _ in pa], labels, resamples, seed, per_interval)
        per_seed = [100 * (row_scores(x[0], labels)[0].mean() - row_scores(y[0], labels)[0].mean())
                    for x, y in zip(pa, pb, strict=True)]
        acc = [100 * v for v in gap.accuracy]
        verdict = A_BETTER if acc[1] > 0 else B_BETTER if acc[2] < 0 else NOT_SIGNIFICANT
        rows.append({"A": a, "B": b, "seeds": len(seeds), "rows": len(labels), "accuracy_diff_pts": acc[0],
                     "low": acc[1], "high": acc[2], "per_seed": " / ".join(f"{d:+.2f}" for d in per_seed),
                     "a_wins": f"{sum(d > 0 for d in per_seed)}/{len(seeds)}", "loglik_diff": gap.log_likelihood[0],
                     "level": per_interval, "verdict": verdict})
    return pl.DataFrame(rows) if rows else None
