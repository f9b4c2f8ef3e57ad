"""The package's shape: arrows point one way (no import cycles) and modules stay readable (<= 300 lines).

No module imports another that (transitively) imports it back. Function-level (lazy) imports count
too: a cycle hidden inside a function is still a cycle in the
design. Imports under ``if TYPE_CHECKING:`` do not run and are ignored.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "i2m2_ray"
MAX_LINES = 300
# Modules allowed to be longer, each with the reason a split would hurt reading.
LONG_MODULES: dict[str, str] = {
    "i2m2_ray.config": "one schema checker (types, ranges, paths, duplicate YAML keys) read as a unit",
    "i2m2_ray.data.fastmri": "the fastMRI recipe (k-space -> images, fastMRI+ labels, volume split) top to bottom",
}
LIMIT_WITH_REASON = 330  # a reason buys a little room, not a second module's worth


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules that ``path`` imports (``from a.b import c`` means a.b.c when that is a module)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
    return {m for m in found if m in known and m != here}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, known) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "i2m2_ray.train.loop" in graph["i2m2_ray.tune.trainable"]
    assert len(graph) > 30


def test_no_import_cycles_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_modules_stay_under_300_lines_or_say_why():
    long = {module_name(f): len(f.read_text().splitlines()) for f in PACKAGE.rglob("*.py")}
    over = {m: n for m, n in long.items() if n > MAX_LINES and m not in LONG_MODULES}
    assert not over, f"modules over {MAX_LINES} lines without a reason in LONG_MODULES: {over}"
    assert all(long[m] <= LIMIT_WITH_REASON for m in LONG_MODULES), {m: long[m] for m in LONG_MODULES}
