"""What every benchmark prints and saves: the machine, versions, date, and a Markdown + JSON table.

Benchmarks run from the repository root as modules (``python -m bench.<name>``), so ``bench`` and
``i2m2_ray`` import without touching ``sys.path``. Only torch and numpy are needed here, so
``bench/gpu_throughput.py`` still runs on a bare GPU box.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# Real datasets (MNIST, FSDD) shared between checkouts; tests use the same variable.
SHARED_DATA = Path(os.environ.get("I2M2_SHARED_DATA", REPO.parent / "shared" / "data"))


def environment(**extra: Any) -> dict[str, Any]:
    """Machine and library versions (imported lazily, so GPU-only hosts without Ray still work)."""
    import numpy
    import torch

    env: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for name in ("ray", "pyarrow", "optuna", "polars"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            pass
    env.update(extra)
    return env


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def save(name: str, title: str, env: dict[str, Any], rows: list[dict[str, Any]], notes: str = "",
         columns: list[str] | None = None, out: Path = RESULTS, payload: dict[str, Any] | None = None) -> str:
    """Print the table and write ``<name>.md`` and ``<name>.json`` (env, rows, payload) under ``out``."""
    lines = [f"# {title}", "", *(f"- {k}: {v}" for k, v in env.items()), "", *markdown_table(rows, columns)]
    text = "\n".join(lines) + "\n" + (f"\n{notes.strip()}\n" if notes else "")
    print("\n" + text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    data = {"env": env, "rows": rows, **(payload or {})}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return text


def save_sections(name: str, title: str, env: dict[str, Any], sections: list[tuple[str, list[dict[str, Any]]]],
                  notes: str = "", out: Path = RESULTS, payload: dict[str, Any] | None = None) -> str:
    """Several tables under one title: ``sections`` is [(heading, rows)]; writes ``<name>.md`` and ``.json``."""
    lines = [f"# {title}", "", *(f"- {k}: {v}" for k, v in env.items())]
    for heading, rows in sections:
        lines += ["", f"## {heading}", "", *(markdown_table(rows) if rows else ["(no rows)"])]
    text = "\n".join(lines) + "\n" + (f"\n{notes.strip()}\n" if notes else "")
    print("\n" + text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    data = {"env": env, "sections": {heading: rows for heading, rows in sections}, **(payload or {})}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return text
