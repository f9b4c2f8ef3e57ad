"""Bad input: each kind gives one `error:` line naming file, column and row, exit 2, and no damage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2m2_ray.data.__main__ import main
from i2m2_ray.data.format import Manifest, ModalitySpec, tensor_array
from i2m2_ray.data.memory import load_split
from i2m2_ray.data.writer import write_dataset
from i2m2_ray.errors import DataError

from .test_data_avmnist import write_multibench


def _table(split: str, n: int, shape=(8, 8), start: int = 0) -> pa.Table:
    rng = np.random.default_rng(n + start)
    return pa.table({
        "sample_id": pa.array([f"s-{start + i:04d}" for i in range(n)]),
        "image": tensor_array(rng.random((n, *shape), dtype=np.float32)),
        "label": pa.array(rng.integers(0, 3, n).astype(np.int8)),
    })


def make_dataset(root: Path, tables: dict[str, pa.Table] | None = None, shape=(8, 8)) -> Path:
    tables = tables or {"train": _table("train", 20), "val": _table("val", 6, start=100),
                        "test": _table("test", 6, start=200)}
    manifest = Manifest(name="tiny", task="multiclass", classes=["a", "b", "c"],
                        modalities={"image": ModalitySpec(kind="image", column="image", shape=list(shape))},
                        splits={})
    return write_dataset(root, manifest, tables, row_group_size=4)


def _replace_table(ds: Path, split: str, table: pa.Table) -> None:
    pq.write_table(table, ds / f"{split}.parquet", row_group_size=4)
    m = json.loads((ds / "manifest.json").read_text())
    m["splits"][split]["rows"] = table.num_rows
    (ds / "manifest.json").write_text(json.dumps(m))


def corrupt_truncated(ds):
    p = ds / "train.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def corrupt_nan(ds):
    t = _table("train", 20)
    img = t.column("image").combine_chunks().to_numpy_ndarray().copy()
    img[13, 2, 3] = np.nan
    _replace_table(ds, "train", t.set_column(1, "image", tensor_array(img)))


def corrupt_shape(ds):
    _replace_table(ds, "val", _table("val", 6, shape=(8, 7), start=100))


def corrupt_missing_column(ds):
    _replace_table(ds, "test", _table("test", 6, start=200).drop_columns(["image"]))


def corrupt_label(ds):
    t = _table("train", 20)
    y = t.column("label").to_numpy().copy()
    y[5] = 7
    _replace_table(ds, "train", t.set_column(2, "label", pa.array(y)))


def corrupt_empty(ds):
    _replace_table(ds, "val", _table("val", 0, start=100))


def corrupt_duplicate(ds):
    t = _table("test", 6, start=200)
    ids = t.column("sample_id").to_pylist()
    ids[2] = "s-0004"  # also in train
    _replace_table(ds, "test", t.set_column(0, "sample_id", pa.array(ids)))


def corrupt_missing_file(ds):
    (ds / "val.parquet").unlink()


def corrupt_row_count(ds):
    m = json.loads((ds / "manifest.json").read_text())
    m["splits"]["train"]["rows"] = 21
    (ds / "manifest.json").write_text(json.dumps(m))


def corrupt_manifest_json(ds):
    (ds / "manifest.json").write_text('{"name": "tiny",\n "task": ')


def corrupt_dtype(ds):
    m = json.loads((ds / "manifest.json").read_text())
    m["modalities"]["image"]["dtype"] = "uint8"
    (ds / "manifest.json").write_text(json.dumps(m))


def corrupt_null_label(ds):
    t = _table("train", 20)
    y = t.column("label").to_pylist()
    y[9] = None
    _replace_table(ds, "train", t.set_column(2, "label", pa.array(y, type=pa.int8())))


CASES = {
    "truncated parquet": (corrupt_truncated, ["train.parquet", "unreadable Parquet"]),
    "nan": (corrupt_nan, ["train.parquet", "column 'image'", "row 13", "NaN"]),
    "wrong shape": (corrupt_shape, ["val.parquet", "column 'image'", "shape [8, 7]", "[8, 8]"]),
    "missing column": (corrupt_missing_column, ["test.parquet", "missing column 'image'"]),
    "label out of range": (corrupt_label, ["train.parquet", "column 'label'", "row 5", "label 7 out of range"]),
    "empty split": (corrupt_empty, ["val.parquet", "split 'val' is empty"]),
    "duplicate ids": (corrupt_duplicate, ["test.parquet", "column 'sample_id'", "row 2", "duplicate", "s-0004"]),
    "missing file": (corrupt_missing_file, ["val.parquet", "missing"]),
    "row count": (corrupt_row_count, ["manifest.json", "split 'train'", "20 rows", "21"]),
    "malformed manifest": (corrupt_manifest_json, ["manifest.json:2", "malformed JSON"]),
    "dtype": (corrupt_dtype, ["train.parquet", "column 'image'", "dtype float", "uint8"]),
    "null label": (corrupt_null_label, ["train.parquet", "column 'label'", "row 9", "missing label"]),
}


def test_good_dataset_validates(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds")
    assert main(["validate", str(ds)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {ds}")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_dataset_one_line_error(case, tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds")
    corrupt, expected = CASES[case]
    corrupt(ds)
    assert main(["validate", str(ds)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for piece in expected:
        assert piece in err, (piece, err)
    split = {"truncated parquet": "train", "nan": "train", "label out of range": "train",
             "null label": "train", "dtype": "train"}.get(case, "val" if case in ("wrong shape", "empty split",
                                                                                   "missing file") else "test")
    if case in ("row count", "malformed manifest"):
        split = "train"
    with pytest.raises(DataError):  # every reader validates first
        load_split(ds, split)


def _digest(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def _bad_nan(src):
    a = np.load(src / "audio" / "train_data.npy")
    a[17, 3, 4] = np.inf
    np.save(src / "audio" / "train_data.npy", a)
    return ["audio/train_data.npy", "row 17", "NaN or inf"]


def _bad_missing(src):
    (src / "audio" / "test_data.npy").unlink()
    return ["audio/test_data.npy", "missing modality file"]


def _bad_shape(src):
    np.save(src / "audio" / "test_data.npy", np.zeros((20, 112, 100)))
    return ["audio/test_data.npy", "shape [20, 112, 100]"]


def _bad_label(src):
    y = np.load(src / "train_labels.npy")
    y[4] = 10
    np.save(src / "train_labels.npy", y)
    return ["train_labels.npy", "column 'label'", "row 4", "out of range"]


def _bad_truncated_npy(src):
    p = src / "image" / "train_data.npy"
    p.write_bytes(p.read_bytes()[:1000])
    return ["image/train_data.npy", "unreadable npy"]


@pytest.mark.parametrize("bad", [_bad_nan, _bad_missing, _bad_shape, _bad_label, _bad_truncated_npy])
def test_failed_conversion_leaves_existing_output_untouched(bad, tmp_path, capsys):
    good, src = tmp_path / "good", tmp_path / "bad"
    write_multibench(good, seed=1)
    write_multibench(src, seed=2)
    out = tmp_path / "out" / "avmnist"
    assert main(["prepare", "avmnist", "--source", str(good), "--out", str(out), "--val-size", "10", "--quiet"]) == 0
    before = _digest(out)
    expected = bad(src)
    assert main(["prepare", "avmnist", "--source", str(src), "--out", str(out), "--val-size", "10",
                 "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for piece in expected:
        assert piece in err, (piece, err)
    assert _digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["avmnist"]  # no temp dirs left behind


def test_refuses_to_overwrite_without_flag(tmp_path, capsys):
    src = tmp_path / "mb"
    write_multibench(src)
    out = make_dataset(tmp_path / "ds")
    assert main(["prepare", "avmnist", "--source", str(src), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_commit_validation_failure_keeps_output(tmp_path, capsys):
    """A conversion whose result fails validation (duplicate ids) is never published."""
    out = make_dataset(tmp_path / "ds")
    before = _digest(out)
    n = 30
    src = tmp_path / "src" / "f.parquet"
    src.parent.mkdir()
    pq.write_table(pa.table({"id": [f"x{i % 25}" for i in range(n)],
                             "emb": pa.array([[float(i), 1.0] for i in range(n)], type=pa.list_(pa.float32())),
                             "label": pa.array(np.arange(n) % 2)}), src)
    assert main(["prepare", "features", "--source", str(src), "--modality", "img=emb", "--id-column", "id",
                 "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "duplicate sample id" in err and "column 'sample_id'" in err
    assert _digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds", "src"]
