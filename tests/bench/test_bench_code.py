"""Benchmarks use the project's public API only: run as modules, one helper for environment and tables.

A bench that reaches into private helpers silently measures something else when they change; one that
starts Ray itself may join another user's cluster; one with its own table code drifts from the others.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name not in ("__init__.py", "common.py"))


def _calls(tree: ast.AST) -> set[str]:
    return {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_bench_uses_public_api_and_the_common_helper(path):
    tree = ast.parse(path.read_text())
    calls = _calls(tree)
    assert not {c for c in calls if c.startswith("sys.path.")}, "run as python -m bench.<name>, no sys.path edits"
    assert "ray.init" not in calls, "start Ray with i2m2_ray.cluster.init_ray or i2m2_ray.tune.init_ray"
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("i2m2_ray") for alias in node.names if alias.name.startswith("_")]
    assert not private, f"private imports: {private}"
    from_common = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module == "bench.common" for alias in node.names}
    assert {"environment"} <= from_common and from_common & {"save", "save_sections"}, from_common
    assert not calls & {"json.dump", "json.dumps"}, "tables and their JSON are written by bench.common"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_bench_imports(path):
    """Every name a bench imports at module level exists (e.g. after an API change of i2m2_ray.tune)."""
    assert callable(importlib.import_module(f"bench.{path.stem}").main)
