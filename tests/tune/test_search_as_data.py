"""Searching any training-config key, and trials that end on a user error: real Ray Tune, Optuna, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from i2m2_ray.errors import I2M2Error
from i2m2_ray.tune.experiment import load_experiment
from i2m2_ray.tune.phases import search_variant
from i2m2_ray.tune.runner import CODE_CHANGED, run_experiment
from i2m2_ray.tune.state import ExperimentState

pytestmark = pytest.mark.slow
SMALL = ["budget.max_epochs=2", "budget.grace_period=1", "final.seeds=[0]", "dataset.builtin.train_size=200",
         "dataset.builtin.val_size=60", "dataset.builtin.test_size=60"]
SEARCHED = ["search.model.hidden={choice: [16, 32]}", "search.optim.momentum={uniform: [0.0, 0.95]}"]


@pytest.fixture(scope="module")
def searched(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("searched") / "exp"
    exp = load_experiment(None, [f"output_dir={out}", "variants=[unimodal:image,inter:lf]", "budget.trials=2",
                                 *SMALL, *SEARCHED])
    return out, run_experiment(exp)


def _hparams(trial_dir: Path) -> dict[str, object]:
    """The HParams TensorBoard shows for a trial, read back from Tune's event file in the trial dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(trial_dir))
    events.Reload()
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            out = {}
            for name, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                out[name] = getattr(value, kind)
            return out
    raise AssertionError(f"{trial_dir}: no HParams session")


def test_every_trial_trained_with_its_searched_values(searched):
    """Search trials and final runs: config.yaml (what the loop trained with), Tune's params.json and
    TensorBoard's HParams all hold the same model.hidden and optim.momentum."""
    out, _ = searched
    params_files = sorted(out.glob("*/trial_*/params.json"))
    assert len(params_files) == 2 * 2 + 2  # two searches of two trials, two final runs
    hiddens = set()
    for path in params_files:
        params = json.loads(path.read_text())
        values = {**params, **params.get("run", {})}
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        assert config["model"]["hidden"] == values["model.hidden"] in (16, 32)
        assert config["optim"]["momentum"] == values["optim.momentum"] and 0.0 <= values["optim.momentum"] <= 0.95
        assert config["optim"]["lr"] == values["optim.lr"]
        hp = _hparams(path.parent)
        assert hp["model.hidden"] == values["model.hidden"]
        assert math.isclose(hp["optim.momentum"], values["optim.momentum"], rel_tol=1e-6)
        assert math.isclose(hp["lr"], values["optim.lr"], rel_tol=1e-6) and hp["variant"] == config["variant"]
        hiddens.add(values["model.hidden"])
    assert hiddens == {16, 32} or len(hiddens) == 1  # the choice's values only


def test_table_has_a_column_per_searched_path_with_the_best_values(searched):
    out, table = searched
    assert table.columns[6:11] == ["lr", "weight_decay", "model.hidden", "optim.momentum", "trials"]
    state = ExperimentState(out)
    for row in table.iter_rows(named=True):
        best = state.phase(f"search-{row['variant'].replace(':', '-')}")["best"]
        assert row["model.hidden"] == best["params"]["model.hidden"]
        assert row["optim.momentum"] == best["params"]["optim.momentum"]
        finals = [r for r in state.phase("final")["runs"] if r["variant"] == row["variant"]]
        assert finals and all(r["params"] == best["params"] for r in finals)  # final runs carry every value
    header = (out / "results.md").read_text().splitlines()[0]
    assert "| lr | wd | model.hidden | optim.momentum | trials |" in header


def test_diverging_trials_end_while_the_search_goes_on(ray_local, tmp_path, capsys):
    """A huge learning rate without clipping: those trials end 'diverged' with a NaN metric, once each
    (not retried), the others finish and the best comes from them."""
    exp = load_experiment(None, [f"output_dir={tmp_path}", "variants=[unimodal:image]", "budget.trials=4", *SMALL,
                                 "train.optim.grad_clip=null", "search.optim.lr={choice: [0.01, 1.0e+8]}",
                                 "train.optim.batch_size=40"])  # 5 steps an epoch: enough to reach NaN
    phase = search_variant(exp, "unimodal:image", {}, ExperimentState(tmp_path), resume=True)
    trials = phase["trials"]
    statuses = sorted({t["status"] for t in trials})
    assert len(trials) == 4 and statuses == ["diverged", "ok"], trials
    for t in trials:
        diverged = t["params"]["optim.lr"] == 1e8
        assert (t["status"] == "diverged") == diverged
        assert math.isnan(t["val_best"]) == diverged
    assert phase["best"]["status"] == "ok" and phase["best"]["params"]["optim.lr"] == 0.01
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " diverged: " in ln]
    assert len(lines) == sum(t["status"] == "diverged" for t in trials)  # one line each: no retry


def test_a_deterministic_trial_error_is_not_retried(ray_local, tmp_path, capsys):
    """Stage-1 weights gone before stage 2 starts: each trial fails once with the loader's message,
    Tune does not retry it, and the phase ends in one line."""
    missing = {"image": str(tmp_path / "gone" / "image.pt"), "audio": str(tmp_path / "gone" / "audio.pt")}
    exp = load_experiment(None, [f"output_dir={tmp_path}", "variants=[unimodal:image,unimodal:audio,intra]",
                                 "budget.trials=2", *SMALL])
    with pytest.raises(I2M2Error) as info:
        search_variant(exp, "intra", missing, ExperimentState(tmp_path), resume=True)
    assert str(info.value) == (f"search-intra: every trial failed (first: error: {missing['image']}: "
                               "state dict not found)")
    printed = capsys.readouterr().out
    assert printed.count("[intra] trial ") == 2 and printed.count("state dict not found") == 2, printed
    attempts = [json.loads(line) for p in (tmp_path / "search-intra").glob("trial_*/result.json")
                for line in p.read_text().splitlines()]
    assert len(attempts) == 2 and all(a["trial_status"].startswith("error: ") for a in attempts)


def test_resume_of_an_experiment_written_in_the_old_format(ray_local, tmp_path, capsys):
    """An experiment directory as an earlier version wrote it (fixed search schema, final.from_scratch,
    no mode default, trial rows with lr / weight_decay, no code fingerprint) resumes without re-running
    anything, says the code changed, and rebuilds the same table."""
    out = tmp_path / "exp"
    args = [f"output_dir={out}", "variants=[unimodal:image]", "budget.trials=1", *SMALL]
    table = run_experiment(load_experiment(None, args))
    saved = yaml.safe_load((out / "experiment.yaml").read_text())
    saved["search"] = {"lr": saved["search"]["optim.lr"]["loguniform"],
                       "weight_decay": saved["search"]["optim.weight_decay"]["loguniform"],
                       "optimizer": None, "batch_size": None}
    saved["final"]["from_scratch"] = saved.pop("stage2")["from_scratch"]
    (out / "experiment.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    state = json.loads((out / "state.json").read_text())
    del state["code"]
    for row in [state["phases"]["search-unimodal-image"]["best"], *state["phases"]["search-unimodal-image"]["trials"],
                *state["phases"]["final"]["runs"]]:
        params = row.pop("params")
        row.update(lr=params["optim.lr"], weight_decay=params["optim.weight_decay"], optimizer=None, batch_size=None)
    (out / "state.json").write_text(json.dumps(state))
    (out / "results.md").unlink()
    capsys.readouterr()

    again = run_experiment(load_experiment(None, args))
    printed = capsys.readouterr().out
    assert CODE_CHANGED in printed.splitlines() and "search already finished" in printed
    assert "final runs already finished" in printed
    assert again.drop("wall_s").equals(table.drop("wall_s"))
    assert (out / "results.md").is_file()
    assert "code" in json.loads((out / "state.json").read_text())
    run_experiment(load_experiment(None, args))  # same code again: nothing to say
    assert CODE_CHANGED not in capsys.readouterr().out
