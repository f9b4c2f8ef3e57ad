"""``python -m i2m2_ray.train``: bad input gets one line naming the problem and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "i2m2_ray.train", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_trains_and_prints_final_metrics(tmp_path, small_dataset):
    proc = cli(f"run_dir={tmp_path / 'run'}", f"dataset.path={small_dataset}", "variant=unimodal:image",
               "epochs=2", "tensorboard=false")
    assert proc.returncode == 0, proc.stderr
    assert "epoch   2/2" in proc.stdout and '"test/accuracy"' in proc.stdout
    assert json.loads((tmp_path / "run" / "final.json").read_text())["epochs_run"] == 2


@pytest.mark.parametrize(("args", "fragments"), [
    (["optim.lrr=0.1"], ["unknown config key 'optim.lrr'"]),
    (["bogus=1"], ["unknown config key 'bogus'"]),
    (["variant=fusion:xyz"], ["unknown variant 'fusion:xyz'"]),
    (["variant=unimodal:text"], ["unknown modality 'text'", "image, audio"]),
    (["model.modalities=[image,depth]"], ["model.modalities", "unknown modality 'depth'"]),
    (["variant=inter:early"], ["inter:early", "must share one grid"]),
    (["optim.lr=-1"], ["optim.lr: must be > 0"]),
    (["epochs=many"], ["epochs: expected an integer"]),
    (["noequals"], ["override 'noequals': expected key=value"]),
])
def test_bad_config_and_variant_errors(tmp_path, small_dataset, args, fragments):
    proc = cli(f"run_dir={tmp_path / 'run'}", f"dataset.path={small_dataset}", *args)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("variant: intra\noptim:\n  lr: [0.1\n")
    assert_one_line_error(cli(str(bad)), str(bad), "malformed YAML")


def _copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_nan_in_dataset_is_reported_with_file_column_and_row(tmp_path, dataset_factory):
    data = _copy_dataset(dataset_factory(), tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["modalities"]["image"]["dtype"] = "float32"
    (data / "manifest.json").write_text(json.dumps(manifest))
    for split in ("train", "val", "test"):
        table = pq.read_table(data / f"{split}.parquet")
        images = table.column("image").combine_chunks().to_numpy_ndarray().astype(np.float32)
        if split == "train":
            images[7, 3, 3] = np.nan
        col = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(images))
        pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", col), data / f"{split}.parquet")
    proc = cli(f"run_dir={tmp_path / 'run'}", f"dataset.path={data}", "variant=unimodal:image", "epochs=1")
    assert_one_line_error(proc, "train.parquet", "'image'", "row 7")


def test_wrong_shape_in_dataset_is_reported(tmp_path, dataset_factory):
    data = _copy_dataset(dataset_factory(), tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["modalities"]["image"]["shape"] = [32, 32]
    (data / "manifest.json").write_text(json.dumps(manifest))
    proc = cli(f"run_dir={tmp_path / 'run'}", f"dataset.path={data}", "variant=unimodal:image", "epochs=1")
    assert_one_line_error(proc, "'image'", "[28, 28]", "[32, 32]")


def test_missing_dataset_directory(tmp_path):
    assert_one_line_error(cli(f"dataset.path={tmp_path / 'nope'}"), "dataset.path", "not a directory")


def test_existing_checkpoints_are_never_overwritten_without_resume(tmp_path, small_dataset):
    run = tmp_path / "run"
    ok = cli(f"run_dir={run}", f"dataset.path={small_dataset}", "variant=unimodal:image", "epochs=1",
             "tensorboard=false")
    assert ok.returncode == 0, ok.stderr
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    proc = cli(f"run_dir={run}", f"dataset.path={small_dataset}", "variant=unimodal:image", "epochs=2",
               "resume=false")
    assert_one_line_error(proc, "resume=false")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
