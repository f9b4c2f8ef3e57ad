"""The default-job bench states issue 12's target (best I2M2 within 4 points of Bayes, at most 1 below any
baseline) from the results rows, so a run that misses it says so in its saved table."""

from __future__ import annotations

from bench.tune_default import ceiling_check


def _rows(**means: float) -> list[dict]:
    return [{"variant": v.replace("_", ":", 1), "test_accuracy_mean": m, "bayes_accuracy": 0.671875}
            for v, m in means.items()]


def test_met_when_close_to_bayes_and_not_behind_a_baseline():
    line = ceiling_check(_rows(inter_lf=0.66, intra=0.45, i2m2_lf=0.655, i2m2_lrtf=0.64))
    assert line.startswith("Ceiling check (met): best I2M2 i2m2:lf 65.50 %, -1.69 pts to Bayes 67.19 %"), line
    assert "-0.50 pts to the best baseline inter:lf 66.00 %" in line


def test_not_met_when_far_from_bayes_or_behind_a_baseline():
    assert "NOT met" in ceiling_check(_rows(inter_lf=0.58, i2m2_lf=0.583))  # 8.9 points below Bayes
    assert "NOT met" in ceiling_check(_rows(inter_lf=0.665, i2m2_lf=0.650))  # 1.5 points behind inter
    assert "not applicable" in ceiling_check([{"variant": "i2m2:lf", "test_accuracy_mean": 0.6,
                                               "bayes_accuracy": None}, {"variant": "intra",
                                                                         "test_accuracy_mean": 0.5}])
