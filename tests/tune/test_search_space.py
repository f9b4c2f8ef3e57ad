"""Search spaces as data: validation before Ray, old experiment files translated, trials built from the space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from i2m2_ray.config import to_dict
from i2m2_ray.errors import ConfigError
from i2m2_ray.tune.experiment import experiment_from_dict, load_experiment
from i2m2_ray.tune.service import make_sampler, sampler_seed, trial_param_space
from i2m2_ray.tune.tensorboard import trial_hparams
from i2m2_ray.tune.trainable import trial_config

REPO = Path(__file__).resolve().parents[2]
MODEL_KEYS = "encoders, frontend, hidden, inter_channels, lrtf_out, lrtf_rank, modalities, unimodal_channels"


@pytest.mark.parametrize(("override", "message"), [
    ("search.model.hiden={choice: [16, 32]}",
     f"search.model.hiden: not a training-config key (model has: {MODEL_KEYS})"),
    ("search.optim.lr.x={uniform: [0, 1]}", "search.optim.lr.x: not a training-config key (optim.lr is a value, "
                                            "not a section)"),
    ("search.seed={int: [0, 3]}", "search.seed: set by the experiment for every trial, not searchable"),
    ("search.epochs={int: [1, 3]}", "search.epochs: set by the experiment for every trial, not searchable"),
    ("search.model.hidden={uniform: [16, 64]}", "search.model.hidden: uniform draws real numbers but the key holds "
                                                "int; use int or choice"),
    ("search.optim.name={int: [1, 2]}", "search.optim.name: int draws integers but the key holds str; use choice"),
    ("search.model.hidden={int: [16.5, 64]}", "search.model.hidden: int needs [low, high] with low < high "
                                              "(integers), got [16.5, 64]"),
    ("search.optim.momentum={uniform: [0.9, 0.1]}", "search.optim.momentum: uniform needs [low, high] with "
                                                    "low < high, got [0.9, 0.1]"),
    ("search.optim.lr={loguniform: [0, 0.1]}", "search.optim.lr: loguniform needs low > 0, got [0, 0.1]"),
    ("search.model.hidden={int: [0, 64], log: true}", "search.model.hidden: log int needs low > 0, got [0, 64]"),
    ("search.model.hidden={choice: []}", "search.model.hidden: choice needs a non-empty list, got []"),
    ("search.model.hidden={choice: [16], uniform: [1, 2]}", "search.model.hidden: give exactly one of loguniform, "
     "uniform, int, choice (int may add log: true), got {'choice': [16], 'uniform': [1, 2]}"),
    ("search.optim.batch_size={choice: [40, 0]}", "search.optim.batch_size: 0 gives an invalid training config "
                                                  "(optim.batch_size: must be in [1, 2147483647], got 0)"),
    ("search.optim.name={choice: [sgd, adam]}", "search.optim.name: 'adam' gives an invalid training config "
                                                "(optim.name: unknown optimizer 'adam' (sgd, adamw))"),
    ("search.model.hidden=64", "search.model.hidden: expected a distribution such as {loguniform: [0.001, 0.1]}, "
                               "{uniform: [0.0, 0.9]}, {int: [16, 128]} or {choice: [a, b]}, got 64"),
    ("search_overrides.intra.optim.lr={loguniform: [0.1, 0.01]}",
     "search_overrides.intra.optim.lr: loguniform needs [low, high] with low < high, got [0.1, 0.01]"),
])
def test_invalid_search_entries_fail_in_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_experiment(None, [override])
    assert str(info.value) == message


@pytest.mark.parametrize(("metric", "mode"), [("accuracy", "max"), ("balanced_accuracy", "max"), ("auroc", "max"),
                                              ("loss", "min"), ("ece", "min")])
def test_mode_follows_the_metric(tmp_path, metric, mode):
    data = yaml.safe_load((REPO / "search_spaces" / "default.yaml").read_text())
    assert "mode" not in data  # the shipped files leave it to the metric
    exp = load_experiment(None, [f"metric={metric}"])
    assert exp.mode == mode and exp.trial_base("intra", {})["mode"] == mode


OLD_FILE = """
name: old
output_dir: runs/old
seed: 3
metric: accuracy
mode: max
variants: [unimodal:image, unimodal:audio, inter:lf, intra, i2m2:lf]
train:
  optim: {name: sgd, momentum: 0.9}
search:
  lr: [0.003, 0.1]
  weight_decay: [1.0e-5, 1.0e-3]
  optimizer: [sgd, adamw]
  batch_size: [20, 40]
search_overrides:
  intra: {lr: [0.01, 0.2], weight_decay: [1.0e-4, 1.0e-2], optimizer: null, batch_size: null}
final:
  seeds: [0, 1]
  from_scratch: true
"""

NEW_FORM = {
    "optim.lr": {"loguniform": [0.003, 0.1]}, "optim.weight_decay": {"loguniform": [1e-5, 1e-3]},
    "optim.name": {"choice": ["sgd", "adamw"]}, "optim.batch_size": {"choice": [20, 40]},
}


def test_old_experiment_file_loads_translated(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_FILE)
    exp = load_experiment(path)
    assert exp.search == NEW_FORM
    assert exp.space_for("intra") == {"optim.lr": {"loguniform": [0.01, 0.2]},
                                      "optim.weight_decay": {"loguniform": [1e-4, 1e-2]}}
    assert exp.space_for("inter:lf") == NEW_FORM
    assert exp.stage2.from_scratch is True and exp.final.seeds == [0, 1]
    # the translated experiment saves in the new form and reloads to the same experiment
    again = experiment_from_dict(yaml.safe_load(yaml.safe_dump(to_dict(exp))))
    assert to_dict(again) == to_dict(exp)
    # old-form command-line overrides still work, over new-form files too
    exp = load_experiment(None, ["search.lr=[0.001,0.3]", "final.from_scratch=true"])
    assert exp.search["optim.lr"] == {"loguniform": [0.001, 0.3]} and exp.stage2.from_scratch


def test_overrides_merge_over_search_and_null_removes():
    exp = load_experiment(None, ["search.model.hidden={choice: [16, 32]}",
                                 "search_overrides.intra.model.hidden=null",
                                 "search_overrides.intra.optim.momentum={uniform: [0.0, 0.95]}",
                                 "search.optim.weight_decay=null"])
    assert list(exp.search) == ["optim.lr", "model.hidden"]
    assert exp.space_for("intra") == {"optim.lr": exp.search["optim.lr"],
                                      "optim.momentum": {"uniform": [0.0, 0.95]}}
    assert exp.searched_paths() == ["optim.lr", "model.hidden", "optim.momentum"]


def test_trial_config_applies_every_searched_path(tmp_path):
    exp = load_experiment(None, ["search.model.hidden={int: [16, 64]}", "search.optim.momentum={uniform: [0.0, 0.95]}",
                                 "search.model.encoders.image.hidden={choice: [32, 48]}"])
    space = trial_param_space(exp, "inter:lf")
    assert set(space) == {"base", "optim.lr", "optim.weight_decay", "model.hidden", "optim.momentum",
                          "model.encoders.image.hidden"}
    assert (space["model.hidden"].lower, space["model.hidden"].upper) == (16, 65)  # randint: inclusive high
    values = {"optim.lr": 0.02, "optim.weight_decay": 1e-4, "model.hidden": 17, "optim.momentum": 0.25,
              "model.encoders.image.hidden": 48}
    cfg = trial_config({"base": space["base"], **values}, str(tmp_path))
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.hidden, cfg.optim.momentum) == (0.02, 1e-4, 17, 0.25)
    assert cfg.model.encoders["image"].hidden == 48 and cfg.run_dir == str(tmp_path)
    assert cfg.optim.batch_size == 100 and cfg.optim.name == "sgd"  # the rest from the experiment
    final = trial_config({"run": {"variant": "inter:lf", "base": space["base"], **values, "seed": 7}}, str(tmp_path))
    assert final.seed == 7 and final.model.hidden == 17 and final.optim.momentum == 0.25
    assert trial_hparams({"run": {"variant": "inter:lf", "base": space["base"], **values, "seed": 7}}) == {
        "variant": "inter:lf", "seed": 7, "lr": 0.02, "weight_decay": 1e-4, "model.hidden": 17,
        "optim.momentum": 0.25, "model.encoders.image.hidden": 48}


def test_default_space_samples_what_the_fixed_schema_sampled():
    """Renaming lr / weight_decay to optim.lr / optim.weight_decay keeps their sorted order, so the seeded
    multivariate TPE proposes exactly the values the earlier fixed schema did (also past its start-up trials)."""
    exp = load_experiment(None, ["budget.trials=9"])
    assert sampler_seed(exp, "intra") == exp.seed + sum(map(ord, "intra"))

    def proposals(names: tuple[str, str]) -> list[tuple[float, float]]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(exp, "intra"))
        dists = {names[0]: optuna.distributions.FloatDistribution(0.003, 0.1, log=True),
                 names[1]: optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
        out = []
        for _ in range(9):
            trial = study.ask(fixed_distributions=dists)
            lr, wd = trial.params[names[0]], trial.params[names[1]]
            study.tell(trial, -abs(lr - 0.03) - abs(wd - 1e-4) * 10)
            out.append((lr, wd))
        return out

    assert proposals(("lr", "weight_decay")) == proposals(("optim.lr", "optim.weight_decay"))


def test_a_trial_config_written_by_an_earlier_version_still_trains(tmp_path):
    """A phase interrupted before an upgrade is restored with its old trial configs (lr, weight_decay, ...)."""
    base = load_experiment().trial_base("unimodal:image", {})
    cfg = trial_config({"base": base, "lr": 0.05, "weight_decay": 2e-4, "optimizer": "adamw", "batch_size": 20},
                       str(tmp_path))
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.name, cfg.optim.batch_size) == (0.05, 2e-4, "adamw", 20)
