"""``python -m bench.gpu_throughput`` runs on a bare GPU box where only torch and numpy are installed.

The script runs under ``python -S`` with a site directory holding ONLY torch, numpy and their
declared requirements (symlinked from this venv): Ray, pyarrow, yaml, torchaudio and tensorboard
are simply not there, exactly as on such a box. A tiny CPU configuration keeps it short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bare_site(target: Path, roots: tuple[str, ...] = ("torch", "numpy")) -> Path:
    """Symlink the given distributions and their (non-extra) requirements into ``target``."""
    from packaging.requirements import Requirement

    target.mkdir(parents=True, exist_ok=True)
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}:
            src, dst = Path(dist.locate_file(top)), target / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    return target


@pytest.mark.slow
def test_gpu_bench_runs_with_torch_and_numpy_only(tmp_path):
    site = bare_site(tmp_path / "site")
    assert (site / "torch").exists() and not (site / "ray").exists() and not (site / "pyarrow").exists()
    out = tmp_path / "out"
    args = ["--device", "cpu", "--steps", "2", "--size", "16", "--batch", "2", "--rounds", "1", "--warmup", "1",
            "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    check = subprocess.run([sys.executable, "-S", "-c", "import yaml"], capture_output=True, env=env)
    assert check.returncode != 0  # really absent
    proc = subprocess.run([sys.executable, "-S", "-m", "bench.gpu_throughput", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours_samples_per_s" in proc.stdout and "plain_samples_per_s" in proc.stdout
    saved = list(out.glob("train_gpu_cpu*.json"))
    assert len(saved) == 1
    row = json.loads(saved[0].read_text())["rows"][0]
    assert row["ours_samples_per_s"] > 0 and row["plain_samples_per_s"] > 0 and row["ratio"] > 0
