"""The experiment directory's files and ledger (``state.json``): which phases finished and what they found.

Written atomically after every phase, so an interrupted experiment resumes where it
stopped and ``python -m i2m2_ray.report`` can read an unfinished one. The ledger also
records a fingerprint of the code that wrote it, so a resume after an upgrade can say so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from i2m2_ray.errors import ConfigError
from i2m2_ray.fsutil import atomic_write_json

EXPERIMENT_FILE = "experiment.yaml"
STATE = "state.json"
TABLE = "results"
# The final seed runs: stage-1 winners, then stage-2 winners (an earlier version put both in "final").
FINAL, FINAL_STAGE2 = "final", "final-stage2"


def read_json(path: Path) -> Any:
    """A JSON file this project wrote; a truncated or hand-edited one fails in one line naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: corrupt JSON ({exc}); restore it or use a new output_dir") from None


def code_fingerprint() -> str:
    """Package version + hash of every ``i2m2_ray/**/*.py``: changes whenever the code does."""
    from importlib import metadata

    import i2m2_ray

    root = Path(i2m2_ray.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    try:
        version = metadata.version("i2m2-ray")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"{version}+{digest.hexdigest()[:16]}"


class ExperimentState:
    def __init__(self, exp_dir: Path) -> None:
        self.path = Path(exp_dir) / STATE
        self.data: dict[str, Any] = read_json(self.path) if self.path.is_file() else {"phases": {}}
        if not isinstance(self.data, dict) or not isinstance(self.data.get("phases"), dict):
            raise ConfigError(f"{self.path}: corrupt ledger (no 'phases' mapping); restore it or use a new output_dir")

    def phase(self, name: str) -> dict[str, Any] | None:
        return self.data["phases"].get(name)

    def final_runs(self) -> list[dict[str, Any]]:
        """Every recorded final run, of both final phases (also the single ``final`` of earlier versions)."""
        return [r for name in (FINAL, FINAL_STAGE2) for r in (self.phase(name) or {}).get("runs", [])]

    def record(self, name: str, payload: dict[str, Any]) -> None:
        self.data["phases"][name] = payload
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def slug(variant: str) -> str:
    """A variant name usable as a directory name: ``i2m2:lf`` -> ``i2m2-lf``."""
    return variant.replace(":", "-")


# Trial rows written before searches were data held these four keys instead of "params".
_OLD_ROW_KEYS = {"lr": "optim.lr", "weight_decay": "optim.weight_decay", "optimizer": "optim.name",
                 "batch_size": "optim.batch_size"}


def row_params(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row's searched values by dotted path, also for rows an earlier version wrote."""
    if "params" in row:
        return dict(row["params"])
    return {path: row[key] for key, path in _OLD_ROW_KEYS.items() if row.get(key) is not None}
