"""The experiment directory's files and ledger (``state.json``): which phases finished and what they found.

The directory may be object storage (see storage.py); every path the ledger holds is relative to
its root, so a moved or downloaded experiment still resumes and reports (ledgers of earlier
versions held absolute paths: they are translated on load). Written atomically after every
phase, so an interrupted experiment resumes where it stopped and ``python -m i2m2_ray.report``
can read an unfinished one. The ledger also records a fingerprint of the code that wrote it, so a
resume after an upgrade can say so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from i2m2_ray.errors import ConfigError
from i2m2_ray.storage import Storage, open_storage

EXPERIMENT_FILE = "experiment.yaml"
STATE = "state.json"
TABLE = "results"
# The final seed runs: stage-1 winners, then stage-2 winners (an earlier version put both in "final").
FINAL, FINAL_STAGE2 = "final", "final-stage2"


def read_json(path: Path) -> Any:
    """A local JSON file this project wrote; a truncated or hand-edited one fails in one line naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: corrupt JSON ({exc}); restore it or use a new output_dir") from None


def relative_path(path: str, phases: set[str], root: Path | None = None) -> str:
    """An absolute path an earlier version recorded (``<exp>/<phase>/<trial>[/<file>]``) as relative to the
    experiment root, found by its phase directory, so a moved experiment still resolves. Kept as it is: a
    relative path, and an existing one outside the local ``root`` (a ledger copied elsewhere on purpose)."""
    parts = Path(path).parts
    if not Path(path).is_absolute():
        return path
    if root is not None and Path(path).exists() and not Path(path).resolve().is_relative_to(root.resolve()):
        return path
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in phases:
            return "/".join(parts[i:])
    return path


def _translate(data: dict[str, Any], root: Path | None) -> None:
    """Old ledgers: ``trial_dir``, ``model_path`` and search ``init`` paths made relative, in place."""
    phases = set(data["phases"])
    for payload in data["phases"].values():
        if not isinstance(payload, dict):
            continue
        for row in [payload.get("best") or {}, *payload.get("trials", []), *payload.get("runs", [])]:
            if isinstance(row.get("trial_dir"), str):
                row["trial_dir"] = relative_path(row["trial_dir"], phases, root)
        if isinstance(payload.get("model_path"), str):
            payload["model_path"] = relative_path(payload["model_path"], phases, root)
        init = payload.get("init")
        if isinstance(init, dict) and all(isinstance(v, str) for v in init.values()):
            payload["init"] = {k: relative_path(v, phases, root) for k, v in init.items()}


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
    def __init__(self, exp_dir: str | Path | Storage) -> None:
        self.storage = open_storage(exp_dir)
        self.path = self.storage.location(STATE)
        self.data: dict[str, Any] = self.storage.read_json(STATE) if self.storage.is_file(STATE) else {"phases": {}}
        if not isinstance(self.data, dict) or not isinstance(self.data.get("phases"), dict):
            raise ConfigError(f"{self.path}: corrupt ledger (no 'phases' mapping); restore it or use a new output_dir")
        _translate(self.data, None if self.storage.remote else Path(self.storage.root))

    def phase(self, name: str) -> dict[str, Any] | None:
        return self.data["phases"].get(name)

    def final_runs(self) -> list[dict[str, Any]]:
        """Every recorded final run, of both final phases (also the single ``final`` of earlier versions)."""
        return [r for name in (FINAL, FINAL_STAGE2) for r in (self.phase(name) or {}).get("runs", [])]

    def record(self, name: str, payload: dict[str, Any]) -> None:
        self.data["phases"][name] = payload
        self.save()

    def save(self) -> None:
        self.storage.write_json(STATE, self.data)


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
