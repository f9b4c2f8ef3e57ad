"""Every experiment-file error is one line, exit code 2, before Ray or any trial starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from i2m2_ray.config import to_dict
from i2m2_ray.errors import ConfigError
from i2m2_ray.tune.experiment import load_experiment

REPO = Path(__file__).resolve().parents[2]


def tune_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "i2m2_ray.tune", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.mark.parametrize(("args", "fragment"), [
    (["budgett.trials=2"], "unknown config key 'budgett'"),
    (["--num-cpus", "1", "budgett.trials=2"], "unknown config key 'budgett'"),  # options between overrides
    (["search.lr=[0.1,0.01]"], "search.optim.lr: loguniform needs [low, high] with low < high, got [0.1, 0.01]"),
    (["search.weight_decay=[0,0.1]"], "search.optim.weight_decay: loguniform needs low > 0, got [0, 0.1]"),
    (["search.model.hiden={choice: [16, 32]}"], "search.model.hiden: not a training-config key (model has: "
                                                "encoders, frontend, hidden, inter_channels, lrtf_out, lrtf_rank, "
                                                "modalities, unimodal_channels)"),
    (["metric=loss", "mode=max"], "mode: 'max' contradicts metric 'loss' (a better loss is lower): "
                                  "set mode: min or leave it out"),
    (["variants=[unimodal:image,inter:xyz]"], "unknown variant 'inter:xyz'"),
    (["variants=[unimodal:depth]"], "unknown modality 'depth'"),
    (["variants=[unimodal:image,i2m2:lf]"], "'i2m2:lf' is initialised from unimodal:audio, inter:lf: add it to "
                                             "variants or set stage2.from_scratch=true"),
    (["search.model.hidden={choice: [16, 32]}"], "search.model.hidden: intra starts from the stage-1 weights of "
                                                 "unimodal:image, unimodal:audio, so their model keys cannot be "
                                                 "searched (set stage2.from_scratch=true to search them)"),
    (["train.model.lrtf_rank=-1"], "model.lrtf_rank: must be in [1, 4096], got -1"),
    (["variants=[unimodal:image,inter:early]"], "variant 'inter:early': "),
    (["train.optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["train.epochs=3"], "train.epochs: set by the experiment"),
    (["budget.grace_period=20"], "budget.grace_period: must be in [1, max_epochs=6]"),
    (["final.seeds=[1,1]"], "final.seeds: need at least one seed, all distinct"),
    (["search_overrides.intra:lf.lr=[0.1,1]"], "search_overrides.intra:lf: not one of the experiment's variants"),
])
def test_config_errors_fail_before_anything_starts(tmp_path, args, fragment):
    out = tmp_path / "exp"
    proc = tune_cli(f"output_dir={out}", *args)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert not out.exists(), "nothing may be written before the experiment is valid"


def test_malformed_experiment_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbudget: {trials: 2\n")
    proc = tune_cli(str(bad))
    assert proc.returncode == 2 and "malformed YAML" in proc.stderr and str(bad) in proc.stderr


@pytest.mark.parametrize("name", ["default", "avmnist", "fastmri", "features"])
def test_shipped_experiment_files_load(name):
    exp = load_experiment(REPO / "search_spaces" / f"{name}.yaml")
    assert exp.variants and exp.budget.trials >= 1


def test_stage_split_follows_the_method():
    exp = load_experiment(REPO / "search_spaces" / "default.yaml")
    assert exp.stage1_variants() == ["unimodal:image", "unimodal:audio", "inter:lf", "inter:lrtf"]
    assert exp.stage2_variants() == ["intra", "i2m2:lf", "i2m2:lrtf"]
    with pytest.raises(ConfigError, match="train.variant"):
        load_experiment(REPO / "search_spaces" / "default.yaml", ["train.variant=intra"])


def test_second_driver_on_the_same_experiment_is_refused(tmp_path):
    """Two drivers on one output_dir would restore the same phase and delete each other's checkpoints."""
    from i2m2_ray.tune.runner import experiment_lock
    from i2m2_ray.tune.state import EXPERIMENT_FILE

    out = tmp_path / "exp"
    out.mkdir()
    with experiment_lock(out):
        proc = tune_cli(f"output_dir={out}", "variants=[unimodal:image]")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert f"another run of this experiment is in progress there (pid {os.getpid()})" in lines[0], lines
    assert not (out / EXPERIMENT_FILE).exists()  # refused before writing anything
    with experiment_lock(out):  # released when its holder is done
        pass


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("state.json", '{"phases": {"search-unimodal-image": {"best"', "state.json: corrupt JSON"),
    ("state.json", '[1, 2]', "state.json: corrupt ledger (no 'phases' mapping)"),
    ("experiment.yaml", "name: x\nbudget: {trials: 2\n", "experiment.yaml:3: malformed YAML"),
    ("experiment.yaml", "budgett: 1\n", "experiment.yaml: unknown config key 'budgett'"),
])
def test_corrupt_experiment_files_fail_in_one_line_naming_the_file(tmp_path, name, content, fragment):
    """Under tune and report alike: exit code 2, one line with the file, and the file left as it was."""
    out = tmp_path / "exp"
    out.mkdir()
    if name == "state.json":
        (out / "experiment.yaml").write_text(yaml.safe_dump(to_dict(load_experiment(None, [f"output_dir={out}"]))))
    (out / name).write_text(content)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for proc in (tune_cli(f"output_dir={out}"),
                 subprocess.run([sys.executable, "-m", "i2m2_ray.report", str(out)], capture_output=True, text=True,
                                cwd=REPO, timeout=120)):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: {out / name}") and fragment in lines[0], lines
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before
