"""``--overwrite`` only ever replaces one of our datasets; concurrent writers never delete a complete one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from i2m2_ray.data.__main__ import main
from i2m2_ray.data.format import load_manifest
from i2m2_ray.data.synthetic import SyntheticConfig, generate
from i2m2_ray.data.validate import validate_dataset
from i2m2_ray.data.writer import publish
from i2m2_ray.errors import DataError

SMALL = SyntheticConfig(train_size=200, val_size=40, test_size=40)


def digest(root: Path) -> dict[str, str]:
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def prepare_args(kind: str, tmp: Path) -> list[str]:
    """Each converter's required arguments; the guard must refuse before any source is read."""
    src = str(tmp / "src")
    return {
        "avmnist": ["--source", src],
        "avmnist-raw": ["--mnist", src, "--fsdd", src],
        "fastmri": ["--source", src, "--annotations", src, "--file-list", src],
        "features": ["--source", src, "--modality", "a=b"],
        "builtin": ["--seed", "1"],
    }[kind]


def user_dir(tmp: Path) -> Path:
    d = tmp / "home"
    (d / "docs").mkdir(parents=True)
    (d / "notes.txt").write_text("my work")
    (d / "docs" / "thesis.tex").write_text("\\chapter{}")
    return d


def foreign_manifest(tmp: Path) -> Path:
    d = tmp / "other"
    d.mkdir()
    (d / "manifest.json").write_text('{"version": 3, "files": ["a.bin"]}')
    (d / "a.bin").write_bytes(b"\x00" * 10)
    return d


def plain_file(tmp: Path) -> Path:
    f = tmp / "file.txt"
    f.write_text("not a directory")
    return f


@pytest.mark.parametrize("target", [user_dir, foreign_manifest, plain_file])
@pytest.mark.parametrize("kind", ["avmnist", "avmnist-raw", "fastmri", "features", "builtin"])
def test_overwrite_refuses_what_is_not_a_dataset(tmp_path, capsys, kind, target):
    out = target(tmp_path)
    before, listing = digest(out), sorted(p.name for p in tmp_path.iterdir())
    assert main(["prepare", kind, *prepare_args(kind, tmp_path), "--out", str(out), "--overwrite", "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: {out}: exists and is not a prepared dataset (no valid "
                                       "manifest.json); refusing to replace it\n")
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no temp dirs left behind


def test_overwrite_replaces_our_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    generate(SMALL, out)
    assert main(["prepare", "builtin", "--out", str(out), "--seed", "5", "--quiet"]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert load_manifest(out).provenance["seed"] == 0
    assert main(["prepare", "builtin", "--out", str(out), "--seed", "5", "--overwrite", "--quiet"]) == 0
    assert load_manifest(out).provenance["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.fixture
def winner_and_loser(tmp_path) -> tuple[Path, Path]:
    """A complete dataset at ``out`` and a finished one in a temp dir that lost the race to it."""
    out = generate(SMALL, tmp_path / "ds")
    loser = generate(SyntheticConfig(train_size=50, val_size=10, test_size=10, seed=9), tmp_path / ".ds.tmp")
    return out, loser


def test_loser_of_a_race_keeps_the_winners_dataset(winner_and_loser):
    out, loser = winner_and_loser
    before = digest(out)
    assert publish(loser, out, overwrite=False, exist_ok=True) == out
    assert digest(out) == before and not loser.exists()


def test_loser_without_exist_ok_fails_and_keeps_the_winner(winner_and_loser):
    out, loser = winner_and_loser
    before = digest(out)
    with pytest.raises(DataError, match="output directory already exists"):
        publish(loser, out, overwrite=False)
    assert digest(out) == before and not loser.exists()


def test_publish_rechecks_before_replacing(winner_and_loser):
    """A dataset replaced by a user directory between the start and the end of a conversion survives."""
    out, loser = winner_and_loser
    for p in sorted(out.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="exists and is not a prepared dataset"):
        publish(loser, out, overwrite=True)
    assert (out / "mine.txt").read_text() == "keep" and not loser.exists()


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from i2m2_ray.data.synthetic import SyntheticConfig, generate
    out, me, other, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    me.touch()
    deadline = time.monotonic() + 120
    while not other.exists() and time.monotonic() < deadline:  # start generating together
        time.sleep(0.01)
    cfg = SyntheticConfig(train_size=300, val_size=60, test_size=60, seed=int(sys.argv[5]))
    generate(cfg, out, overwrite=mode == "overwrite", exist_ok=mode == "cache")
""")


def race(tmp_path: Path, out: Path, mode: str, seeds: tuple[int, int]) -> list[subprocess.CompletedProcess]:
    a, b = tmp_path / "ready-a", tmp_path / "ready-b"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(out), str(me), str(other), mode, str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for me, other, seed in ((a, b, seeds[0]), (b, a, seeds[1]))]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


def test_two_processes_fill_the_builtin_cache_at_once(tmp_path):
    out = tmp_path / "cache" / "builtin-abc"
    results = race(tmp_path, out, "cache", (0, 0))
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    manifest = validate_dataset(out, deep=True)
    assert manifest.splits["train"].rows == 300
    assert sorted(p.name for p in out.parent.iterdir()) == ["builtin-abc"]


def test_two_overwrites_at_once_leave_one_complete_dataset(tmp_path):
    out = generate(SMALL, tmp_path / "data" / "ds")
    results = race(tmp_path, out, "overwrite", (1, 2))
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    manifest = validate_dataset(out, deep=True)
    assert manifest.provenance["seed"] in (1, 2) and manifest.splits["train"].rows == 300
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds"]


@pytest.mark.parametrize("kind", ["builtin", "features"])
def test_unwritable_output_is_one_line(tmp_path, capsys, kind):
    blocker = plain_file(tmp_path)
    out = blocker / "ds"  # its parent is a file: nothing can be created there, even as root
    if kind == "features":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"e": pa.array([[1.0, 2.0]] * 30, type=pa.list_(pa.float32())),
                                 "label": pa.array([0, 1] * 15)}), tmp_path / "src")
    assert main(["prepare", kind, *prepare_args(kind, tmp_path)[:2], *(["--modality", "v=e"] * (kind == "features")),
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: cannot write the dataset (") and err.count("\n") == 1, err
    assert blocker.read_text() == "not a directory"


def test_tilde_in_data_paths_means_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "builtin", "--out", "~/ds", "--quiet"]) == 0
    assert main(["validate", "~/ds", "--quick"]) == 0
    assert load_manifest(home / "ds").splits["train"].rows == SyntheticConfig().train_size
    assert not (tmp_path / "~").exists()
    assert capsys.readouterr().out.splitlines()[0] == f"wrote {home / 'ds'}"
