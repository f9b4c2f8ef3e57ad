"""The experiment's ledger (``state.json``): which phases finished and what they found.

Written atomically after every phase, so an interrupted experiment resumes where it
stopped and ``python -m i2m2_ray.report`` can read an unfinished one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATE = "state.json"


class ExperimentState:
    def __init__(self, exp_dir: Path) -> None:
        self.path = exp_dir / STATE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {"phases": {}}

    def phase(self, name: str) -> dict[str, Any] | None:
        return self.data["phases"].get(name)

    def record(self, name: str, payload: dict[str, Any]) -> None:
        self.data["phases"][name] = payload
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=float))
        os.replace(tmp, self.path)


def slug(variant: str) -> str:
    """A variant name usable as a directory name: ``i2m2:lf`` -> ``i2m2-lf``."""
    return variant.replace(":", "-")
