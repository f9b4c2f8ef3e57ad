"""Precomputed embedding vectors per modality -> the same format and readers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from i2m2_ray.data.__main__ import main
from i2m2_ray.data.memory import iterate_batches, load_split
from i2m2_ray.data.validate import validate_dataset


def test_features_multiclass_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 200
    img, txt = rng.standard_normal((n, 16)).astype(np.float32), rng.standard_normal((n, 8)).astype(np.float32)
    src = tmp_path / "emb.parquet"
    pq.write_table(pa.table({
        "uid": [f"item{i}" for i in range(n)],
        "image_emb": pa.array(list(img), type=pa.list_(pa.float32())),
        "text_emb": pa.FixedSizeListArray.from_arrays(pa.array(txt.ravel()), 8),
        "y": pa.array(rng.integers(0, 5, n)),
    }), src)
    out = tmp_path / "ds"
    assert main(["prepare", "features", "--source", str(src), "--modality", "image=image_emb",
                 "--modality", "text=text_emb", "--label-column", "y", "--id-column", "uid",
                 "--classes", "a,b,c,d,e", "--out", str(out)]) == 0
    m = validate_dataset(out)
    assert m.modalities["image"].kind == "features" and m.modalities["text"].shape == [8]
    assert sum(s.rows for s in m.splits.values()) == n and all(s.rows for s in m.splits.values())
    d = load_split(out, "train")
    ids = pq.read_table(out / "train.parquet", columns=["sample_id"]).column(0).to_pylist()
    rows = [int(i[4:]) for i in ids]
    np.testing.assert_array_equal(d.inputs["image"].numpy(), img[rows])
    np.testing.assert_array_equal(d.inputs["text"].numpy(), txt[rows])
    x, y = next(iterate_batches(d, 10, shuffle=False))
    assert x["image"].shape == (10, 16) and y.dtype == torch.int64


def test_features_multilabel_ragged_error(tmp_path, capsys):
    src = tmp_path / "emb.parquet"
    pq.write_table(pa.table({
        "e": pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]], type=pa.list_(pa.float32())),
        "labels": pa.array([[0, 1], [1, 1], [0, 0]], type=pa.list_(pa.int8())),
    }), src)
    assert main(["prepare", "features", "--source", str(src), "--modality", "v=e", "--task", "multilabel",
                 "--label-column", "labels", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "emb.parquet: column 'e' row 1: length 1" in err and not (tmp_path / "o").exists()
