"""``pip install .`` gives a working tool: a wheel, installed into a fresh venv, runs from an empty directory.

The fresh venv gets the wheel (``--no-deps``) plus a ``.pth`` line naming this venv's site-packages, so the
dependencies import without a second download. ``.pth`` files inside that directory are not processed
(it is not a site directory of the new venv), so this checkout's editable install stays inactive: the
test proves ``i2m2_ray`` comes from the wheel, and the shipped experiments from inside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE_VARIANTS = ["unimodal:image", "unimodal:audio", "inter:lf", "i2m2:lf"]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_is_in_the_wheel_list():
    """pyproject lists packages by hand (for the search_spaces mapping): a new subpackage must be added there."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "i2m2_ray").rglob("__init__.py")}
    found |= {"i2m2_ray.configs", "i2m2_ray.search_spaces"}  # data-only packages
    assert listed == found


def test_console_scripts_point_at_callables():
    import importlib

    scripts = _pyproject()["project"]["scripts"]
    assert set(scripts) == {"i2m2-tune", "i2m2-train", "i2m2-data", "i2m2-report"}
    for target in scripts.values():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


def _copy_sources(dst: Path) -> Path:
    """What the wheel is built from, outside the checkout (an in-tree build/ could leak stale files)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("i2m2_ray", "search_spaces"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    return dst


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (it would put this checkout back on sys.path), no inherited Ray cluster."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "VIRTUAL_ENV")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("package")
    src = root / "src"
    src.mkdir()
    _copy_sources(src)
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = wheels.glob("i2m2_ray-*.whl")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The wheel first: with the .pth in place pip would see this venv's i2m2-ray and skip the install.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", "--force-reinstall", str(wheel)], check=True, capture_output=True, text=True,
                   timeout=600, env=_clean_env())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "deps-from-test-venv.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return env_dir


def _run(venv: Path, args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = _clean_env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_installed_package_runs_from_an_empty_directory(venv, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run(venv, [str(venv / "bin" / "python"), "-c",
                        "import i2m2_ray; from i2m2_ray.tune.experiment import DEFAULT_EXPERIMENT as d; "
                        "print(i2m2_ray.__file__); print(d, d.is_file())"], empty, 120)
    assert where.returncode == 0, where.stderr
    module_file, default = where.stdout.splitlines()
    assert Path(module_file).is_relative_to(venv), module_file  # the wheel, not this checkout
    assert default == f"{Path(module_file).parent / 'search_spaces' / 'default.yaml'} True"

    helped = _run(venv, [str(venv / "bin" / "i2m2-tune"), "--help"], empty, 120)
    assert helped.returncode == 0 and "--smoke" in helped.stdout, helped.stderr

    out = tmp_path / "out"
    proc = _run(venv, [str(venv / "bin" / "i2m2-tune"), "--smoke", f"output_dir={out}", "--num-cpus", "2"],
                empty, 900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| variant |" in proc.stdout
    markdown = (out / "results.md").read_text()
    rows = [ln for ln in markdown.splitlines() if ln.startswith("| ") and not ln.startswith("| variant")]
    assert [r.split(" | ")[0][2:] for r in rows] == SMOKE_VARIANTS
    for row in rows:
        assert f"\n{row}" in proc.stdout  # the printed table is the saved one
    assert list(empty.iterdir()) == []  # nothing written to the working directory
