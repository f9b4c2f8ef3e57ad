"""The evidence scripts under bench/ run end to end at their smoke size and write their tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.avmnist_table import DROPOUT, DROPOUT_VARIANTS, dropout_pairs
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def bench(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m bench.<name>`` from the repository root, as the README runs it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_dependency_regimes_smoke(tmp_path):
    bench("dependency_regimes", "--smoke", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "dependency_regimes.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["bayes %"] == 67.2  # intra 0.5, inter 0.5, 4 classes
    assert {"intra %", "inter:lf %", "i2m2:lf %"} <= set(rows[0])
    row = rows[0]
    low, high = (float(x) for x in row["interval"].strip("[]").split(","))
    assert low <= row["i2m2 - best baseline (pts)"] <= high and row["best baseline"] in ("intra", "inter:lf")
    assert row["verdict"] == ("better" if low > 0 else "worse" if high < 0 else "not significant")


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fsdd").is_dir(),
                    reason="needs ../shared/data (MNIST + FSDD) or $I2M2_SHARED_DATA")
def test_avmnist_table_smoke(tmp_path):
    bench("avmnist_table", "--size", "smoke", "--out", str(tmp_path))
    sections = json.loads((tmp_path / "avmnist_k8-smoke.json").read_text())["sections"]
    table, paired, ablation, paired_ablation, missing, paired_missing, ablated, entropy, verdict, front = (
        sections.values())
    assert [r["variant"] for r in table] == ["unimodal:image", "unimodal:waveform", "inter:lf", "inter:lrtf",
                                             "intra", "i2m2:lf", "i2m2:lrtf"]
    assert [(r["variant"], r["init"]) for r in ablation] == [("i2m2:lf", "stage-1 models"), ("i2m2:lf", "from scratch")]
    assert [(r["A"], r["B"]) for r in paired] == [
        (a, b) for a in ("i2m2:lf", "i2m2:lrtf") for b in [r["variant"] for r in table[:5]]]
    assert [(r["A"], r["B"]) for r in paired_ablation] == [("i2m2:lf", "i2m2:lf@scratch")]
    trained = [("intra", 0), ("i2m2:lf", 0), ("i2m2:lrtf", 0), *((v, DROPOUT) for v in DROPOUT_VARIANTS)]
    assert {(r["model"], r["modality_dropout"], r["missing"]) for r in missing} == {
        (m, p, gone) for m, p in trained for gone in ("(none)", "image", "waveform")}
    assert [(r["A"], r["B"]) for r in paired_missing] == dropout_pairs()
    assert {r["verdict"] for r in paired + paired_missing} <= {"A better", "B better", "not significant"}
    assert {r["left_out"] for r in ablated} == {"(none)", "image", "waveform", "inter"}
    assert {r["model"] for r in entropy} == {r["variant"] for r in table}
    assert [(r["joint"], r["baseline"]) for r in verdict] == [("inter:lf", "intra"), ("inter:lrtf", "intra")]
    assert {r["verdict"] for r in verdict} <= {"detected", "not detected"}
    assert len(front) == 2
