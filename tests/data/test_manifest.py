"""A manifest is type-checked field by field, and its file entries stay inside the dataset directory.

Each bad manifest fails with one line naming ``<dir>/manifest.json`` and the dotted key, from the
loader and from ``python -m i2m2_ray.data validate``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from i2m2_ray.data.__main__ import main
from i2m2_ray.data.format import Manifest, ModalitySpec, load_manifest, read_table
from i2m2_ray.errors import DataError

GOOD: dict[str, Any] = {
    "name": "t", "task": "multiclass", "classes": ["a", "b", "c"],
    "modalities": {
        "image": {"kind": "image", "column": "image", "shape": [28, 28], "dtype": "uint8", "extra": {"scale": 0.5}},
        "audio": {"kind": "waveform", "column": "audio", "shape": [4000], "dtype": "int16", "sample_rate": 8000,
                  "extra": {"n_fft": 62, "hop_length": 129}},
    },
    "splits": {s: {"rows": 10, "files": [f"{s}.parquet"]} for s in ("train", "val", "test")},
    "provenance": {"seed": 0}, "bayes_accuracy": 0.9,
}


def edit(fn: Callable[[dict], None]) -> dict:
    data = copy.deepcopy(GOOD)
    fn(data)
    return data


def write(root: Path, data: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(data))
    return root


def test_the_reference_manifest_loads(tmp_path):
    manifest = load_manifest(write(tmp_path / "d", GOOD))
    assert manifest.modalities["audio"] == ModalitySpec("waveform", "audio", [4000], "int16", 8000,
                                                        {"n_fft": 62, "hop_length": 129})
    assert manifest.splits["val"].files == ["val.parquet"] and manifest.num_classes == 3


CASES = {
    "modalities as a list": (
        lambda d: d.update(modalities=[{"kind": "image", "column": "image", "shape": [28, 28]}]),
        "modalities: expected a mapping, got [{'kind': 'image', 'column': 'image', 'shape': [28, 28]}]"),
    "modality spec not a mapping": (
        lambda d: d["modalities"].update(image="image"), "modalities.image: expected a mapping, got 'image'"),
    "shape with a string": (
        lambda d: d["modalities"]["image"].update(shape=[28, "a"]),
        "modalities.image.shape[1]: expected an integer, got 'a'"),
    "shape with zero": (
        lambda d: d["modalities"]["image"].update(shape=[0, 28]),
        "modalities.image.shape[0]: must be in [1, 2147483647], got 0"),
    "shape not a list": (
        lambda d: d["modalities"]["image"].update(shape=28), "modalities.image.shape: expected a list, got 28"),
    "waveform with two dimensions": (
        lambda d: d["modalities"]["audio"].update(shape=[2, 4000]),
        "modalities.audio.shape: a waveform needs 1 dimension, got [2, 4000]"),
    "unknown kind": (
        lambda d: d["modalities"]["image"].update(kind="video"),
        "modalities.image.kind: 'video' is not one of 'image', 'spectrogram', 'waveform', 'features'"),
    "missing task": (lambda d: d.pop("task"), "task: missing (required)"),
    "missing splits": (lambda d: d.pop("splits"), "splits: missing (required)"),
    "missing column": (lambda d: d["modalities"]["image"].pop("column"), "modalities.image.column: missing (required)"),
    "unknown task": (
        lambda d: d.update(task="regression"), "task: 'regression' is not one of 'multiclass', 'multilabel'"),
    "one class": (lambda d: d.update(classes=["a"]), "classes: a multiclass task needs at least 2, got 1"),
    "classes not a list": (lambda d: d.update(classes="abc"), "classes: expected a list, got 'abc'"),
    "repeated class": (lambda d: d.update(classes=["a", "a"]), "classes: names must be distinct"),
    "no modalities": (lambda d: d.update(modalities={}), "modalities: need at least one modality"),
    "shared column": (
        lambda d: d["modalities"]["audio"].update(column="image"),
        "modalities: column 'image' is used twice (modalities, label and id need one column each)"),
    "rows negative": (
        lambda d: d["splits"]["train"].update(rows=-1), "splits.train.rows: must be >= 0, got -1"),
    "rows a string": (
        lambda d: d["splits"]["train"].update(rows="10"), "splits.train.rows: expected an integer, got '10'"),
    "sample rate zero": (
        lambda d: d["modalities"]["audio"].update(sample_rate=0),
        "modalities.audio.sample_rate: must be >= 1 or null, got 0"),
    "n_fft a string": (
        lambda d: d["modalities"]["audio"]["extra"].update(n_fft="62"),
        "modalities.audio.extra.n_fft: expected a positive integer, got '62'"),
    "scale not a number": (
        lambda d: d["modalities"]["image"]["extra"].update(scale=[1]),
        "modalities.image.extra.scale: expected a number, got [1]"),
    "NaN hidden in provenance": (
        lambda d: d["provenance"].update(stats={"mean": float("nan")}),
        "provenance.stats.mean: must be a finite number, got nan"),
    "bayes accuracy above one": (
        lambda d: d.update(bayes_accuracy=1.5), "bayes_accuracy: must be in [0, 1] or null, got 1.5"),
    "newer format": (lambda d: d.update(format_version=2), "format_version: must be in [1, 1], got 2"),
    "unknown nested key": (
        lambda d: d["modalities"]["image"].update(colour="rgb"),
        "unknown key 'modalities.image.colour' (known here: column, dtype, extra, kind, sample_rate, shape)"),
    "no files": (lambda d: d["splits"]["val"].update(files=[]), "splits.val.files: no files listed"),
    "absolute file": (
        lambda d: d["splits"]["train"].update(files=["/etc/passwd"]),
        "splits.train.files[0]: '/etc/passwd' must be a relative path inside the dataset directory"),
    "parent escape": (
        lambda d: d["splits"]["test"].update(files=["ok.parquet", "../other/test.parquet"]),
        "splits.test.files[1]: '../other/test.parquet' must be a relative path inside the dataset directory"),
    "escape in the middle": (
        lambda d: d["splits"]["train"].update(files=["sub/../../x.parquet"]),
        "splits.train.files[0]: 'sub/../../x.parquet' must be a relative path inside the dataset directory"),
    "empty file name": (
        lambda d: d["splits"]["train"].update(files=[""]),
        "splits.train.files[0]: '' must be a relative path inside the dataset directory"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_manifest_is_one_line_naming_file_and_key(tmp_path, case):
    fn, message = CASES[case]
    root = write(tmp_path / "d", edit(fn))
    with pytest.raises(DataError) as info:
        load_manifest(root)
    assert str(info.value) == f"{root / 'manifest.json'}: {message}"


@pytest.mark.parametrize("data", [[GOOD], "manifest", 3])
def test_manifest_that_is_not_an_object(tmp_path, data):
    root = write(tmp_path / "d", data)
    with pytest.raises(DataError) as info:
        load_manifest(root)
    assert str(info.value) == f"{root / 'manifest.json'}: expected a JSON object, got {type(data).__name__}"


def test_binary_manifest_is_a_data_error(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="manifest.json: unreadable manifest"):
        load_manifest(root)


@pytest.mark.parametrize("case", ["modalities as a list", "shape with a string", "missing task", "parent escape"])
def test_validate_cli_prints_one_line(tmp_path, capsys, case):
    fn, message = CASES[case]
    root = write(tmp_path / "d", edit(fn))
    assert main(["validate", str(root)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {root / 'manifest.json'}: {message}\n"


def test_read_table_never_opens_a_file_outside_the_dataset(tmp_path):
    """A manifest built in code (not loaded) still cannot make a reader leave its directory."""
    outside = tmp_path / "secret.parquet"
    outside.write_bytes(b"not yours")
    manifest = Manifest.from_dict(GOOD)
    manifest.splits["train"].files = ["../secret.parquet"]
    with pytest.raises(DataError, match=r"splits\.train\.files: '\.\./secret\.parquet' is outside the dataset"):
        read_table(tmp_path / "d", manifest, "train")
