"""Files that resume and report read are written whole or not at all; one process per run directory.

A crash, a full disk or a Ctrl-C in the middle of a write must never leave a truncated
``model.pt``, ``final.json`` or ``state.json`` that a later resume trusts. Every such file is
written to a temporary file in the same directory, flushed to disk, then renamed into place
(``os.replace`` is atomic on POSIX filesystems).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from i2m2_ray.errors import ConfigError

LOCK_FILE = ".lock"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=float))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` into memory, then an atomic write: a reader never sees half a checkpoint."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


@contextmanager
def dir_lock(directory: str | Path, what: str = "run") -> Iterator[None]:
    """One process per run or experiment directory: a second would race on its checkpoints.

    ``flock`` is released by the kernel when the holder dies, so a killed run never leaves a stale
    lock. A second process fails at once with one line naming the holder's pid.
    """
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / LOCK_FILE, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise ConfigError(f"{directory}: another {what} is in progress there (pid {holder}); "
                          "wait for it to finish or use another directory") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()
