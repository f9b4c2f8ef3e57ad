"""The shipped experiment files: ``search_spaces/`` of the checkout, or the same files inside an installed wheel.

One source of truth: the repository's top-level ``search_spaces/`` is packaged as
``i2m2_ray/search_spaces`` (pyproject's package-dir), so ``pip install .`` runs the same files
a checkout does.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from i2m2_ray.errors import ConfigError


def search_spaces_dir() -> Path:
    """The checkout's ``search_spaces/`` when running from one (also an editable install), else the wheel's copy."""
    package = Path(str(files("i2m2_ray")))
    checkout = package.parent / "search_spaces"
    if (package.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return package / "search_spaces"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in search_spaces_dir().glob("*.yaml"))


def shipped_experiment(name: str) -> Path:
    """``search_spaces/<name>.yaml`` of this installation; an unknown name fails listing the shipped ones."""
    path = search_spaces_dir() / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise ConfigError(f"no shipped experiment {name!r}; shipped: {', '.join(shipped_names()) or '(none)'}")
    return path


def resolve_experiment(arg: str) -> Path:
    """A path as given when it exists or looks like a path; a bare name (``avmnist``) means a shipped experiment."""
    path = Path(arg)
    if path.exists() or "/" in arg or arg.endswith((".yaml", ".yml")):
        return path
    return shipped_experiment(arg)
