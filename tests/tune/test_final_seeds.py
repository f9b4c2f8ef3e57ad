"""Final seeds as whole pipelines: seed s of intra / I2M2 starts from the seed-s stage-1 final models.

Fast tests check the init mapping and the table's reading of both ledger shapes on real files; the
slow ones run the smoke experiment once (two seeds) and compare the saved tensors.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from i2m2_ray.config import to_dict
from i2m2_ray.errors import I2M2Error
from i2m2_ray.tune.analysis import expert_ablation_table
from i2m2_ray.tune.experiment import load_experiment
from i2m2_ray.tune.phases import stage2_final_inits
from i2m2_ray.tune.results import results_table
from i2m2_ray.tune.runner import CODE_CHANGED, run_experiment
from i2m2_ray.tune.state import FINAL, FINAL_STAGE2, ExperimentState
from tests.tune.conftest import SMOKE_TWO_SEEDS
from tests.tune.procs import SMOKE_EXPERIMENT

SEEDS = SMOKE_TWO_SEEDS
SOURCES = {"image": "unimodal:image", "audio": "unimodal:audio", "inter": "inter:lf"}


def _exp(out: Path, *extra: str):
    return load_experiment(SMOKE_EXPERIMENT, [f"output_dir={out}", *SEEDS, *extra])


def _stage1_rows(out: Path) -> list[dict]:
    return [{"variant": v, "seed": s, "trial_dir": str(out / "final" / f"trial_{v.replace(':', '-')}-{s}")}
            for v in SOURCES.values() for s in (0, 1)]


def test_stage2_final_inits_by_seed_shared_or_none(tmp_path):
    out = tmp_path / "exp"
    best = {"image": str(out / "search-unimodal-image" / "t1" / "model.pt"), "audio": "/elsewhere/audio.pt",
            "inter": str(out / "search-inter-lf" / "t2" / "model.pt")}
    per_seed = stage2_final_inits(_exp(out), ["image", "audio"], {"i2m2:lf": best}, _stage1_rows(out))
    assert per_seed == {"i2m2:lf": {
        str(s): {"image": f"final/trial_unimodal-image-{s}/model.pt",
                 "audio": f"final/trial_unimodal-audio-{s}/model.pt",
                 "inter": f"final/trial_inter-lf-{s}/model.pt"} for s in (0, 1)}}
    shared = stage2_final_inits(_exp(out, "final.shared_init=true"), ["image", "audio"], {"i2m2:lf": best}, [])
    assert shared == {"i2m2:lf": {str(s): {"image": "search-unimodal-image/t1/model.pt", "audio": "/elsewhere/audio.pt",
                                           "inter": "search-inter-lf/t2/model.pt"} for s in (0, 1)}}
    scratch = stage2_final_inits(_exp(out, "stage2.from_scratch=true", "final.shared_init=true"), ["image", "audio"],
                                 {"i2m2:lf": {}}, [])
    assert scratch == {"i2m2:lf": {"0": {}, "1": {}}}
    with pytest.raises(I2M2Error, match=r"^final-stage2: i2m2:lf seed 1 needs the final run of unimodal:image "
                                        r"with seed 1, which .*state.json does not list$"):
        stage2_final_inits(_exp(out), ["image", "audio"], {}, [r for r in _stage1_rows(out) if r["seed"] == 0])


def _run(variant: str, seed: int, acc: float) -> dict:
    return {"variant": variant, "seed": seed, "trial_dir": f"/x/{variant}/{seed}", "error": None,
            "final": {"test/accuracy": acc, "epochs_run": 1}}


@pytest.mark.parametrize("shape", ["two phases", "one phase (earlier versions)"])
def test_table_reads_stage2_final_runs_from_either_ledger_shape(tmp_path, shape):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "experiment.yaml").write_text(yaml.safe_dump(to_dict(_exp(out))))
    acc = {"unimodal:image": (0.5, 0.6), "unimodal:audio": (0.4, 0.4), "inter:lf": (0.7, 0.9), "i2m2:lf": (0.8, 0.6)}
    stage1 = [_run(v, s, acc[v][s]) for v in SOURCES.values() for s in (0, 1)]
    stage2 = [_run("i2m2:lf", s, acc["i2m2:lf"][s]) for s in (0, 1)]
    phases = ({FINAL: {"runs": stage1, "wall_s": 60.0}, FINAL_STAGE2: {"runs": stage2, "wall_s": 10.0}}
              if shape == "two phases" else {FINAL: {"runs": stage1 + stage2, "wall_s": 80.0}})
    (out / "state.json").write_text(json.dumps({"phases": phases}))
    table = results_table(out)
    for row in table.iter_rows(named=True):
        want = acc[row["variant"]]
        assert row["seeds"] == 2 and row["status"] == "done"
        assert math.isclose(row["test_accuracy_mean"], statistics.mean(want))
        assert math.isclose(row["test_accuracy_std"], statistics.stdev(want), abs_tol=1e-12)
        # each variant's share of its phase's wall time
        stage2_wall = 10.0 if shape == "two phases" else 20.0
        assert math.isclose(row["wall_s"], stage2_wall if row["variant"] == "i2m2:lf" else 20.0)
    assert ExperimentState(out).final_runs() == stage1 + stage2


# --- one real smoke experiment with two seeds, shared by the slow tests below ---

def _experts(path: Path, expert: str) -> dict[str, torch.Tensor]:
    """One expert's tensors of a saved state dict (stage-1 and stage-2 models name them ``experts.<e>.*``)."""
    state = torch.load(path, weights_only=True)
    return {k: v for k, v in state.items() if k.startswith(f"experts.{expert}.")}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return bool(a) and set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _i2m2_init(state: ExperimentState, seed: int) -> Path:
    runs = [r for r in state.phase(FINAL_STAGE2)["runs"] if r["variant"] == "i2m2:lf" and r["seed"] == seed]
    assert len(runs) == 1, runs
    return Path(state.storage.path(runs[0]["trial_dir"])) / "init.pt"


@pytest.fixture
def smoke(smoke_two_seeds):
    """The session's smoke experiment (tests/tune/conftest.py): the same experiment as ``_exp`` makes."""
    return smoke_two_seeds


@pytest.mark.slow
def test_seed_s_i2m2_final_starts_from_the_seed_s_stage1_final_models(smoke):
    out, _ = smoke
    state = ExperimentState(out)
    stage1 = {(r["variant"], r["seed"]): out / r["trial_dir"] / "model.pt" for r in state.phase(FINAL)["runs"]}
    assert sorted(stage1) == sorted((v, s) for v in SOURCES.values() for s in (0, 1))
    inits = {s: _i2m2_init(state, s) for s in (0, 1)}
    for seed, init in inits.items():
        for expert, source in SOURCES.items():
            assert _same(_experts(init, expert), _experts(stage1[(source, seed)], expert)), (seed, expert)
            other = stage1[(source, 1 - seed)]
            assert not _same(_experts(init, expert), _experts(other, expert)), (seed, expert)
    for expert in SOURCES:
        assert not _same(_experts(inits[0], expert), _experts(inits[1], expert)), expert
    # the ledger names each source relative to the experiment directory
    recorded = state.phase(FINAL_STAGE2)["init"]["i2m2:lf"]
    assert {s: {e: out / p for e, p in recorded[str(s)].items()} for s in (0, 1)} == {
        s: {e: stage1[(src, s)] for e, src in SOURCES.items()} for s in (0, 1)}
    assert all(not Path(p).is_absolute() for p in recorded["0"].values())


@pytest.mark.slow
def test_table_and_missing_modality_read_the_stage2_final_runs(smoke):
    out, table = smoke
    runs = [r for r in ExperimentState(out).phase(FINAL_STAGE2)["runs"] if r["variant"] == "i2m2:lf"]
    accs = [r["final"]["test/accuracy"] for r in runs]
    row = table.filter(table["variant"] == "i2m2:lf").row(0, named=True)
    assert row["seeds"] == 2 and math.isclose(row["test_accuracy_mean"], statistics.mean(accs))
    assert math.isclose(row["test_accuracy_std"], statistics.stdev(accs), abs_tol=1e-12)
    missing = expert_ablation_table(out, "accuracy")
    full = missing.filter((missing["model"] == "i2m2:lf") & (missing["left_out"] == "(none)")).row(0, named=True)
    assert full["seeds"] == 2 and math.isclose(full["accuracy_mean"], statistics.mean(accs), abs_tol=1e-9)


def _ledger_without(out: Path, *phases: str) -> dict:
    """The ledger less some phases, its paths absolute (as earlier versions wrote them), so a copy elsewhere
    still points at this experiment's trials."""
    data = json.loads((out / "state.json").read_text())
    for name in phases:
        del data["phases"][name]
    for payload in data["phases"].values():
        for row in [payload.get("best") or {}, *payload.get("trials", []), *payload.get("runs", [])]:
            if "trial_dir" in row:
                row["trial_dir"] = str(out / row["trial_dir"])
        if "model_path" in payload:
            payload["model_path"] = str(out / payload["model_path"])
        if payload.get("init") and all(isinstance(v, str) for v in payload["init"].values()):
            payload["init"] = {k: str(out / v) for k, v in payload["init"].items()}
    return data


@pytest.mark.slow
def test_shared_init_starts_every_seed_from_the_best_search_trials(smoke, tmp_path):
    """The same searches and stage-1 finals (copied ledger), then final-stage2 with final.shared_init=true."""
    out, _ = smoke
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "state.json").write_text(json.dumps(_ledger_without(out, FINAL_STAGE2)))
    run_experiment(_exp(shared, "final.shared_init=true"))
    state = ExperimentState(shared)
    assert not (shared / FINAL).exists()  # stage-1 finals were not re-run
    for seed in (0, 1):
        init = _i2m2_init(state, seed)
        assert init.parent.parent == shared / FINAL_STAGE2
        for expert, source in SOURCES.items():
            best = out / state.phase(f"search-{source.replace(':', '-')}")["model_path"]
            assert _same(_experts(init, expert), _experts(best, expert)), (seed, expert)
    assert state.phase(FINAL_STAGE2)["init_from"] == "best search trials"


@pytest.mark.slow
def test_an_earlier_versions_single_final_phase_is_kept(smoke, tmp_path, capsys):
    """A ledger as the previous version wrote it (stage-2 final runs inside ``final``, no code fingerprint):
    the same table, nothing re-run, the code-change note."""
    out, table = smoke
    old = tmp_path / "old"
    old.mkdir()
    data = _ledger_without(out, FINAL_STAGE2)
    stage2 = ExperimentState(out).phase(FINAL_STAGE2)
    data["phases"][FINAL]["runs"] += stage2["runs"]
    data["phases"][FINAL]["wall_s"] += stage2["wall_s"]
    del data["code"]
    (old / "state.json").write_text(json.dumps(data))
    capsys.readouterr()
    again = run_experiment(_exp(old))
    printed = capsys.readouterr().out
    assert CODE_CHANGED in printed.splitlines() and "final runs already finished" in printed
    assert "final runs of i2m2:lf already finished (an earlier version" in printed
    assert not (old / FINAL_STAGE2).exists() and ExperimentState(old).phase(FINAL_STAGE2) is None
    assert again.drop("wall_s").equals(table.drop("wall_s"))


@pytest.mark.slow
def test_an_unrecorded_final_stage2_resumes_its_tune_run(smoke, capsys):
    """The driver died after final-stage2's trials finished but before the ledger recorded it: the re-run
    restores that Tune run (same trials, nothing trained again) instead of starting a new one."""
    out, table = smoke
    trained = {p: p.read_text() for p in (out / FINAL_STAGE2).glob("trial_*/result.json")}
    assert len(trained) == 2
    (out / "state.json").write_text(json.dumps(_ledger_without(out, FINAL_STAGE2)))
    capsys.readouterr()
    again = run_experiment(_exp(out))
    assert f"resuming {FINAL_STAGE2} from {out / FINAL_STAGE2}" in capsys.readouterr().out
    assert {p: p.read_text() for p in (out / FINAL_STAGE2).glob("trial_*/result.json")} == trained
    assert again.drop("wall_s").equals(table.drop("wall_s"))
