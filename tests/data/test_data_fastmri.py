"""fastMRI conversion on real-layout HDF5 volumes with ids from the real fastMRI+ annotations."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import torch

from i2m2_ray.data.fastmri import (
    CLASSES,
    finding_to_index,
    kspace_to_images,
    label_vector,
    read_annotations,
    volume_split,
)
from i2m2_ray.data.memory import iterate_batches, load_split
from i2m2_ray.data.validate import validate_dataset

from .conftest import FASTMRI_VOLUMES, REPO


def _rows(ds):
    m = json.loads((ds / "manifest.json").read_text())
    out = {}
    for split in m["splits"]:
        t = pq.read_table(ds / f"{split}.parquet", columns=["volume_id", "slice", "label", "findings"])
        labels = t.column("label").combine_chunks().to_numpy_ndarray()
        for vol, sl, lab, fin in zip(t.column("volume_id").to_pylist(), t.column("slice").to_pylist(), labels,
                                     t.column("findings").to_pylist()):
            out[(vol, sl)] = (split, lab.tolist(), fin)
    return m, out


def test_finding_mapping_rules():
    assert finding_to_index("Ligament - ACL High Grade Sprain") == CLASSES.index("acl")
    assert finding_to_index("Meniscus Tear") == CLASSES.index("meniscus_tear")
    assert finding_to_index("Cartilage - Partial Thickness loss/defect") == CLASSES.index("cartilage")
    for other in ("Joint Effusion ", "Displaced Meniscal Tissue", "artifact", "Ligament - MCL Low-Mod Grade Sprain",
                  "Ligament - PCL High Grade", "LCL Complex- High Grade Sprain", "Periarticular cysts"):
        assert finding_to_index(other) == 0, other
    assert label_vector([]).tolist() == [0, 0, 0, 0]
    assert label_vector(["Meniscus Tear", "Bone - Lesion"]).tolist() == [1, 1, 0, 0]


def test_labels_match_real_annotations(fastmri_dataset, knee_csvs):
    manifest, rows = _rows(fastmri_dataset)
    assert manifest["task"] == "multilabel" and manifest["classes"] == CLASSES
    # file1000185: cartilage on 5-7, ACL on 16-18, nothing elsewhere
    for s in range(19):
        want = [0, 0, 0, 1] if s in (5, 6, 7) else ([0, 0, 1, 0] if s in (16, 17, 18) else [0, 0, 0, 0])
        assert rows[("file1000185", s)][1] == want, s
    assert rows[("file1000586", 15)][1] == [0, 1, 0, 0]
    assert rows[("file1000586", 14)][1] == [0, 0, 0, 0]
    assert rows[("file1000351", 3)][1] == [1, 0, 0, 0]
    assert rows[("file1000351", 3)][2] == ["Bone- Subchondral edema"]
    # study-level artifact row: slice 0 -> other; the volume's other slices are unannotated -> zeros
    assert rows[("file1001022", 0)] [1:] == ([1, 0, 0, 0], ["artifact"])
    assert rows[("file1001022", 1)][1] == [0, 0, 0, 0]
    # reviewed volume with no rows: every slice all zeros
    assert all(rows[("file1000033", s)][1] == [0, 0, 0, 0] for s in range(3))
    # multi-coil volume converted (RSS) with its labels
    assert rows[("file1001369", 7)][1] == [1, 0, 0, 0]
    # the unreviewed volume is unlabeled: skipped and recorded
    assert not any(v == "file1000004" for v, _ in rows)
    assert manifest["provenance"]["unlabeled_volumes_skipped"] == ["file1000004"]
    # every row agrees with the rules applied to the raw csv
    ann = read_annotations(*knee_csvs)
    for (vol, s), (_, lab, fin) in rows.items():
        assert fin == ann.findings(vol, s, "slice")
        assert lab == label_vector(fin).tolist()


def test_split_by_volume_deterministic(fastmri_dataset):
    manifest, rows = _rows(fastmri_dataset)
    split_of_vol = {}
    for (vol, _), (split, _, _) in rows.items():
        assert split_of_vol.setdefault(vol, split) == split, f"{vol} spans splits"
    assert set(split_of_vol.values()) == {"train", "val", "test"}
    expected = sum(n for v, (n, _) in FASTMRI_VOLUMES.items() if v != "file1000004")
    assert sum(s["rows"] for s in manifest["splits"].values()) == expected
    ids = [f"file{1000000 + i}" for i in range(200)]
    a = volume_split(ids, seed=0)
    assert a == volume_split(list(reversed(ids)), seed=0)
    assert sorted(a.values()).count("train") == 140 and sorted(a.values()).count("val") == 30
    # independent of PYTHONHASHSEED: compute in fresh interpreters with different hash seeds
    code = ("from i2m2_ray.data.fastmri import volume_split; import json;"
            "print(json.dumps(volume_split([f'file{1000000+i}' for i in range(50)], 0), sort_keys=True))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                           env={"PYTHONHASHSEED": h, "PATH": ""}).stdout for h in ("1", "2")}
    assert len(outs) == 1


def test_images_shapes_and_recipe(fastmri_dataset, fastmri_source):
    manifest = validate_dataset(fastmri_dataset)
    assert manifest.modalities["magnitude"].shape == [320, 320] and manifest.modalities["phase"].kind == "image"
    data = load_split(fastmri_dataset, "train")
    assert data.inputs["magnitude"].shape[1:] == (1, 320, 320)
    assert data.labels.dtype == torch.int64 and data.labels.shape[1] == 4
    phase = data.inputs["phase"]
    assert float(phase.min()) >= -np.pi - 1e-6 and float(phase.max()) <= np.pi + 1e-6
    inputs, labels = next(iterate_batches(data, 8, shuffle=True, seed=1))
    assert inputs["magnitude"].dtype == torch.float32 and labels.shape == (8, 4)

    import h5py
    with h5py.File(fastmri_source / "singlecoil_train" / "file1000351.h5") as f:
        k = f["kspace"][3]
    # independent reference with torch.fft: zero-fill to 400, centred orthonormal IFFT, crop 320
    kt = torch.nn.functional.pad(torch.from_numpy(k), (16, 16))
    img = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(kt, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    img = img[160:480, 40:360]
    _, mag, ph = kspace_to_images(k[None], multicoil=False)
    np.testing.assert_allclose(mag[0], img.abs().numpy(), rtol=1e-4, atol=1e-9)
    t = pq.read_table(fastmri_dataset / f"{_rows(fastmri_dataset)[1][('file1000351', 3)][0]}.parquet")
    row = t.column("sample_id").to_pylist().index("file1000351-003")
    stored = t.column("magnitude").combine_chunks().to_numpy_ndarray()[row]
    np.testing.assert_allclose(stored, mag[0], rtol=1e-6)

    with h5py.File(fastmri_source / "multicoil_train" / "file1001369.h5") as f:
        km = f["kspace"][7]
    _, mags, _ = kspace_to_images(km[None], multicoil=True)
    per_coil = [kspace_to_images(km[c][None], multicoil=False)[1][0] for c in range(km.shape[0])]
    np.testing.assert_allclose(mags[0], np.sqrt(sum(p.astype(np.float64) ** 2 for p in per_coil)), rtol=1e-4)


def test_cli_fastmri_keep_kspace_and_volume_scope(fastmri_source, knee_csvs, tmp_path):
    from i2m2_ray.data.__main__ import main

    src = tmp_path / "src"
    (src / "singlecoil_val").mkdir(parents=True)
    for vol in ("file1000351", "file1001022", "file1000033"):
        (src / "singlecoil_val" / f"{vol}.h5").symlink_to(fastmri_source / "singlecoil_train" / f"{vol}.h5")
    out = tmp_path / "out"
    rc = main(["prepare", "fastmri", "--source", str(src), "--annotations", str(knee_csvs[0]),
               "--file-list", str(knee_csvs[1]), "--out", str(out), "--keep-kspace", "--study-level", "volume",
               "--quiet"])
    assert rc == 0
    m = validate_dataset(out)
    assert m.modalities["kspace"].shape == [2, 640, 400]
    _, rows = _rows(out)
    assert rows[("file1001022", 2)][1:] == ([1, 0, 0, 0], ["artifact"])  # study-level finding on every slice


def test_bad_volume_one_line_error_and_no_output(tmp_path, capsys):
    """Own small annotation files, so this runs without the shared data too."""
    import h5py

    from i2m2_ray.data.__main__ import main

    from .conftest import write_fastmri_volume

    ids = ["file1000001", "file1000002", "file1000003"]
    for i, vid in enumerate(ids):
        write_fastmri_volume(tmp_path / "src" / f"{vid}.h5", 3, seed=i)
    (tmp_path / "knee.csv").write_text("file,slice,study_level,x,y,width,height,label\n"
                                       "file1000001,1,No,1,1,4,4,Meniscus Tear\n")
    (tmp_path / "list.csv").write_text("\n".join(ids) + "\n")
    args = ["prepare", "fastmri", "--source", str(tmp_path / "src"), "--annotations", str(tmp_path / "knee.csv"),
            "--file-list", str(tmp_path / "list.csv"), "--out", str(tmp_path / "out" / "knee"), "--quiet"]
    assert main(args) == 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out" / "knee").iterdir())
    with h5py.File(tmp_path / "src" / "file1000002.h5", "r+") as f:
        k = f["kspace"][()]
        k[2, 5, 5] = np.nan
        f["kspace"][...] = k
    assert main(args + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "file1000002.h5: dataset 'kspace' slice 2: NaN or inf" in err, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out" / "knee").iterdir()) == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["knee"]
