"""Bad config values fail with one exact line naming the dotted key, before any work starts.

Classes, not examples: non-finite numbers, values out of a field's declared range, unknown keys at
every nesting level, keys given twice in YAML, ``~`` in paths. The tables call the loaders directly;
a few cases per class go through ``python -m i2m2_ray.train`` to prove the CLI prints one line,
exits 2 and leaves a finished run directory byte-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from i2m2_ray.config import check_fields, from_dict, load_yaml, parse_overrides
from i2m2_ray.data.avmnist import AVMNISTRawConfig
from i2m2_ray.data.fastmri import FastMRIConfig
from i2m2_ray.data.format import Manifest, ModalitySpec, SplitSpec
from i2m2_ray.data.synthetic import SyntheticConfig
from i2m2_ray.errors import ConfigError
from i2m2_ray.models.builder import EncoderConfig, FrontEndConfig, ModelConfig
from i2m2_ray.train.config import (
    DatasetConfig,
    OptimConfig,
    TrainConfig,
    load_train_config,
)

REPO = Path(__file__).resolve().parents[1]


def error_of(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_train_config(path, overrides)
    return str(info.value)


@pytest.mark.parametrize(("override", "message"), [
    # non-finite, in any spelling YAML or float() accepts
    ("optim.lr=.inf", "optim.lr: must be a finite number, got inf"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("optim.lr=1e999", "optim.lr: must be a finite number, got 1e999"),
    ("optim.weight_decay=.nan", "optim.weight_decay: must be a finite number, got nan"),
    ("optim.grad_clip=-.inf", "optim.grad_clip: must be a finite number, got -inf"),
    ("cpus_per_worker=.inf", "cpus_per_worker: must be a finite number, got inf"),
    ("dataset.builtin.inter_strength=.nan", "dataset.builtin.inter_strength: must be a finite number, got nan"),
    ("dataset.builtin.audio_noise=inf", "dataset.builtin.audio_noise: must be a finite number, got inf"),
    # zero, negative, out of range: the optimiser
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.lr=-1", "optim.lr: must be > 0, got -1.0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0, got -0.1"),
    ("optim.momentum=-0.5", "optim.momentum: must be in [0, 1), got -0.5"),
    ("optim.momentum=1", "optim.momentum: must be in [0, 1), got 1.0"),
    ("optim.grad_clip=0", "optim.grad_clip: must be > 0 or null, got 0.0"),
    ("optim.batch_size=0", "optim.batch_size: must be in [1, 2147483647], got 0"),
    # the run
    ("eval_batch_size=0", "eval_batch_size: must be in [1, 2147483647], got 0"),
    ("threads=-1", "threads: must be in [1, 1024] or null, got -1"),
    ("threads=0", "threads: must be in [1, 1024] or null, got 0"),
    ("epochs=0", "epochs: must be >= 1, got 0"),
    ("patience=0", "patience: must be >= 1 or null, got 0"),
    ("keep_checkpoints=0", "keep_checkpoints: must be >= 1, got 0"),
    ("max_failures=-2", "max_failures: must be >= -1 (-1 = unlimited), got -2"),
    ("workers=0", "workers: must be >= 1, got 0"),
    ("cpus_per_worker=-1", "cpus_per_worker: must be >= 0, got -1.0"),
    ("gpus_per_worker=-0.5", "gpus_per_worker: must be >= 0, got -0.5"),
    ("seed=-1", "seed: must be in [0, 4294967296), got -1"),
    ("seed=4294967296", "seed: must be in [0, 4294967296), got 4294967296"),
    ("seed=99999999999999999999999", "seed: 99999999999999999999999 does not fit in 64 bits"),
    # the model, nested configs included
    ("model.hidden=0", "model.hidden: must be in [1, 65536], got 0"),
    ("model.lrtf_rank=0", "model.lrtf_rank: must be in [1, 4096], got 0"),
    ("model.lrtf_out=-3", "model.lrtf_out: must be in [1, 65536], got -3"),
    ("model.unimodal_channels=0", "model.unimodal_channels: must be in [1, 1024], got 0"),
    ("model.inter_channels=5000", "model.inter_channels: must be in [1, 1024], got 5000"),
    ("model.encoders.image.layers=0", "model.encoders.image.layers: must be in [1, 16] or null, got 0"),
    ("model.encoders.audio.hidden=-1", "model.encoders.audio.hidden: must be in [1, 65536], got -1"),
    ("model.encoders.audio.out_dim=0", "model.encoders.audio.out_dim: must be in [1, 65536], got 0"),
    ("model.frontend.n_fft=1", "model.frontend.n_fft: must be in [2, 65536] or null, got 1"),
    ("model.frontend.hop_length=0", "model.frontend.hop_length: must be in [1, 65536] or null, got 0"),
    ("model.frontend.freq_mask=-1", "model.frontend.freq_mask: must be >= 0, got -1"),
    # the built-in generator
    ("dataset.builtin.train_size=0", "dataset.builtin.train_size: must be in [1, 1000000], got 0"),
    ("dataset.builtin.val_size=-5", "dataset.builtin.val_size: must be in [1, 1000000], got -5"),
    ("dataset.builtin.test_size=0", "dataset.builtin.test_size: must be in [1, 1000000], got 0"),
    ("dataset.builtin.num_classes=1", "dataset.builtin.num_classes: must be in [2, 127], got 1"),
    ("dataset.builtin.intra_strength=1.5", "dataset.builtin.intra_strength: must be in [0, 1], got 1.5"),
    ("dataset.builtin.inter_strength=-0.1", "dataset.builtin.inter_strength: must be in [0, 1], got -0.1"),
    ("dataset.builtin.image_size=2", "dataset.builtin.image_size: must be in [4, 512], got 2"),
    ("dataset.builtin.image_noise=-1", "dataset.builtin.image_noise: must be >= 0, got -1.0"),
    ("dataset.builtin.sample_rate=10", "dataset.builtin.sample_rate: must be in [1000, 192000], got 10"),
    ("dataset.builtin.max_samples=10", "dataset.builtin.max_samples: must be in [64, 1000000], got 10"),
    ("dataset.builtin.min_samples=0", "dataset.builtin.min_samples: must be in [1, 1000000], got 0"),
    ("dataset.builtin.min_samples=5000", "dataset.builtin.min_samples: 5000 is more than max_samples=4000"),
    ("dataset.builtin.seed=-1", "dataset.builtin.seed: must be in [0, 4294967296), got -1"),
    # wrong types
    ("epochs=1.5", "epochs: expected an integer, got 1.5"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("optim.momentum=true", "optim.momentum: expected a number, got True"),
    ("gpu=maybe", "gpu: must be auto, true or false, got 'maybe'"),
])
def test_bad_value_names_the_key(override, message):
    assert error_of([override]) == message


@pytest.mark.parametrize(("override", "prefix"), [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
    ("model.encoders.image.layerz=2", "unknown config key 'model.encoders.image.layerz'"),
    ("model.frontend.nfft=64", "unknown config key 'model.frontend.nfft'"),
    ("dataset.builtin.size=3", "unknown config key 'dataset.builtin.size'"),
    ("dataset.bogus=1", "unknown config key 'dataset.bogus'"),
])
def test_unknown_key_at_every_level(override, prefix):
    assert error_of([override]).startswith(prefix + " (known here: ")


def test_gpu_accepts_yaml_booleans():
    assert load_train_config(overrides=["gpu=true"]).gpu is True
    assert load_train_config(overrides=["gpu=false"]).gpu is False
    assert load_train_config(overrides=["gpu=auto"]).gpu == "auto"


@pytest.mark.parametrize(("text", "line", "key"), [
    ("epochs: 1\nseed: 0\nepochs: 2\n", 3, "epochs"),  # top level: PyYAML would keep the last silently
    ("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n", 4, "lr"),
    ("model:\n  encoders:\n    image: {layers: 2, layers: 3}\n", 3, "layers"),
    ("dataset:\n  builtin:\n    seed: 1\n  builtin:\n    seed: 2\n", 4, "builtin"),
])
def test_duplicate_yaml_key_names_file_and_line(tmp_path, text, line, key):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    assert error_of([], path) == f"{path}:{line}: duplicate key '{key}'"


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("base: &b {lr: 0.1, momentum: 0.9}\noptim: {<<: *b, lr: 0.2}\n")
    assert load_yaml(path)["optim"] == {"lr": 0.2, "momentum": 0.9}


def test_duplicate_key_inside_an_override_value():
    with pytest.raises(ConfigError) as info:
        parse_overrides(["model={hidden: 1, hidden: 2}"])
    assert str(info.value) == "override 'model={hidden: 1, hidden: 2}': duplicate key 'hidden'"


def test_tilde_is_expanded_in_every_path(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    cfg = load_train_config(overrides=["run_dir=~/runs/a", "init.image=~/m/image.pt", "init.inter=~/m/inter.pt",
                                       "dataset.path=~/data", "dataset.cache_dir=~/cache"])
    assert cfg.run_dir == str(home / "runs" / "a")
    assert cfg.init == {"image": str(home / "m" / "image.pt"), "inter": str(home / "m" / "inter.pt")}
    assert cfg.dataset.path == str((home / "data").resolve())
    assert cfg.dataset.cache_dir == str((home / "cache").resolve())
    config_file = home / "t.yaml"
    config_file.parent.mkdir(parents=True)
    config_file.write_text("epochs: 3\n")
    assert load_train_config("~/t.yaml").epochs == 3


# ------------------------------------------------------------------ the metadata convention itself

@dataclass
class Inner:
    rate: float = field(default=0.5, metadata={"gt": 0, "le": 1})


@dataclass
class Demo:
    count: int  # required
    small: float = field(default=0.1, metadata={"lt": 1})
    sizes: list[int] = field(default_factory=list, metadata={"ge": 1})
    weights: dict[str, float] = field(default_factory=dict, metadata={"ge": 0})
    files: list[str] = field(default_factory=list, metadata={"path": True})
    inner: Inner = field(default_factory=Inner)
    anything: dict[str, Any] = field(default_factory=dict)
    flagged: int | None = field(default=None, metadata={"ge": 2, "flag": "--flagged"})


@pytest.mark.parametrize(("data", "message"), [
    ({}, "count: missing (required)"),
    ({"count": 1, "small": 1}, "small: must be < 1, got 1.0"),
    ({"count": 1, "sizes": [3, 0]}, "sizes[1]: must be >= 1, got 0"),
    ({"count": 1, "weights": {"a": 1, "b": -2}}, "weights.b: must be >= 0, got -2.0"),
    ({"count": 1, "inner": {"rate": 0}}, "inner.rate: must be in (0, 1], got 0.0"),
    ({"count": 1, "inner": {"rate": "nan"}}, "inner.rate: must be a finite number, got nan"),
    ({"count": 1, "anything": {"x": [1, {"y": float("inf")}]}}, "anything.x[1].y: must be a finite number, got inf"),
    ({"count": 1, "flagged": 1}, "--flagged: must be >= 2, got 1"),
    ({"count": True}, "count: expected an integer, got True"),
])
def test_from_dict_checks_declared_ranges(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Demo, data)
    assert str(info.value) == message


def test_from_dict_expands_paths_in_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert from_dict(Demo, {"count": 1, "files": ["~/a", "b"]}).files == [str(tmp_path / "a"), "b"]


def test_check_fields_checks_a_dataclass_built_in_code():
    check_fields(Demo(count=1))
    with pytest.raises(ConfigError, match=r"^inner\.rate: must be in \(0, 1\], got 2"):
        check_fields(Demo(count=1, inner=Inner(rate=2.0)))


CONFIG_CLASSES = [TrainConfig, OptimConfig, DatasetConfig, ModelConfig, EncoderConfig, FrontEndConfig,
                  SyntheticConfig, AVMNISTRawConfig, FastMRIConfig, Manifest, ModalitySpec, SplitSpec]


def _leaf_types(hint: Any) -> set[Any]:
    """The types a field's values end up as: Optional stripped, list / mapping items looked into."""
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return _leaf_types(typing.get_args(hint)[-1])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_leaf_types(a) for a in typing.get_args(hint) if a is not type(None)))
    return {hint}


def _numeric_fields() -> list[tuple[str, str]]:
    return [(cls.__name__, f.name) for cls in CONFIG_CLASSES for f in dataclasses.fields(cls)
            if _leaf_types(typing.get_type_hints(cls)[f.name]) & {int, float}]


@pytest.mark.parametrize(("cls_name", "name"), _numeric_fields())
def test_every_numeric_field_declares_a_range(cls_name, name):
    """A new numeric knob without a declared range would accept 0, negatives and huge values silently."""
    cls = next(c for c in CONFIG_CLASSES if c.__name__ == cls_name)
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    assert {"ge", "gt", "le", "lt"} & set(meta), f"{cls_name}.{name} has no range in its field metadata"


def test_converter_configs_report_their_flags():
    with pytest.raises(Exception, match=r"^--seed: must be in \[0, 4294967296\), got -1$"):
        AVMNISTRawConfig(seed=-1).check()
    with pytest.raises(Exception, match=r"^--noise-weight: must be a finite number, got nan$"):
        AVMNISTRawConfig(noise_weight=float("nan")).check()
    with pytest.raises(Exception, match=r"^--limit-volumes: must be >= 1, got 0$"):
        FastMRIConfig(limit_volumes=0).check()


# ------------------------------------------------------------------ through the CLI, a few per class

def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "i2m2_ray.train", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, **(env or {})})


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_dataset) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = cli(f"run_dir={run}", f"dataset.path={small_dataset}", "variant=unimodal:image", "epochs=1",
               "tensorboard=false")
    assert proc.returncode == 0, proc.stderr
    return run


@pytest.mark.parametrize(("args", "line"), [
    (["optim.lr=.inf"], "error: optim.lr: must be a finite number, got inf"),
    (["model.hidden=0"], "error: model.hidden: must be in [1, 65536], got 0"),
    (["threads=-1"], "error: threads: must be in [1, 1024] or null, got -1"),
    (["eval_batch_size=0"], "error: eval_batch_size: must be in [1, 2147483647], got 0"),
    (["optim.momentum=-0.5"], "error: optim.momentum: must be in [0, 1), got -0.5"),
    (["dataset.builtin.sample_rate=10"], "error: dataset.builtin.sample_rate: must be in [1000, 192000], got 10"),
    (["model.encoders.image.layerz=1"], ("error: unknown config key 'model.encoders.image.layerz' (known here: "
                                         "arch, hidden, layers, out_dim)")),
    (["model.encoders.imgae.layers=2"], ("error: model.encoders.imgae: unknown modality 'imgae' (dataset has "
                                         "image, audio)")),
])
def test_cli_one_line_and_finished_run_untouched(finished_run, small_dataset, args, line):
    before = digest(finished_run)
    proc = cli(f"run_dir={finished_run}", f"dataset.path={small_dataset}", "variant=unimodal:image", *args)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines == [line], proc.stderr
    assert digest(finished_run) == before


def test_cli_duplicate_key_in_config_file(tmp_path, finished_run, small_dataset):
    path = tmp_path / "t.yaml"
    path.write_text("variant: unimodal:image\nepochs: 1\noptim:\n  lr: 0.1\nepochs: 5\n")
    before = digest(finished_run)
    proc = cli(str(path), f"run_dir={finished_run}", f"dataset.path={small_dataset}")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {path}:5: duplicate key 'epochs'", proc.stderr
    assert digest(finished_run) == before


def test_cli_run_dir_tilde_lands_in_home(tmp_path, small_dataset):
    home = tmp_path / "home"
    home.mkdir()
    proc = cli("run_dir=~/x", f"dataset.path={small_dataset}", "variant=unimodal:image", "epochs=1",
               "tensorboard=false", env={"HOME": str(home)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (home / "x" / "final.json").is_file() and (home / "x" / "model.pt").is_file()
    assert not (tmp_path / "~").exists() and not (REPO / "~").exists()
