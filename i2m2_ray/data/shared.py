"""One copy of a dataset per Ray node: the trials of a node map the same arrays from its object store.

A detached actor per (node, dataset, modalities, splits), placed on that node, reads the Parquet
splits once (``arrays.read_split``: only the model's columns) and ``ray.put``s them; every trial
or Train worker on the node ``ray.get``s them zero-copy, as read-only numpy views of the node's
shared-memory object store, instead of reading its own float32 copy. Batches are copies of the
rows they take (``memory.iterate_batches``), so the shared arrays are never written.

Lifetime: each reader holds a lease (released when its ``InMemoryData`` is garbage-collected, or
found dead by its pid: the holder shares the node); the holder exits after ``LINGER_S`` seconds
without a live lease, so consecutive phases reuse it and a finished experiment frees the memory.
Object store size: Ray gives it 30 % of RAM by default (``ray start --object-store-memory``); when
the splits do not fit, Ray spills to or allocates on disk (still mapped, zero-copy, from the page
cache), and a put that fails outright leaves each reader with its own copy (one warning line).
``I2M2_SHARE_DATA=0`` turns sharing off.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from i2m2_ray.data.arrays import SplitArrays
from i2m2_ray.data.format import MANIFEST, Manifest
from i2m2_ray.errors import DataError

NAMESPACE = "i2m2_ray"
LINGER_S = float(os.environ.get("I2M2_SHARE_LINGER_S", "120"))


def enabled() -> bool:
    """Share when this process is a Ray worker (a trial or Train worker): not in the driver, not without Ray."""
    import sys

    if os.environ.get("I2M2_SHARE_DATA", "1") == "0" or "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def fingerprint(root: Path, manifest: Manifest, modalities: list[str], splits: tuple[str, ...]) -> str:
    """What the shared copy holds: the dataset (path, manifest, files' sizes and mtimes) and the selection,
    so a rewritten dataset or another column selection never reuses a stale copy."""
    files = sorted(f for s in splits for f in manifest.splits[s].files)
    stats = [(f, (root / f).stat().st_size, (root / f).stat().st_mtime_ns) for f in files]
    key = [str(root.resolve()), (root / MANIFEST).read_text(), stats, list(modalities), list(splits)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


class Holder:
    """The node's copy (a Ray actor; see ``_holder``). Methods run one at a time, so concurrent first
    requests wait for one read instead of each reading."""

    def __init__(self, root: str, modalities: list[str], splits: list[str]) -> None:
        self.root, self.modalities, self.splits = Path(root), modalities, tuple(splits)
        self.refs: dict[str, Any] | None = None
        self.reads = 0
        self.leases: dict[str, int] = {}  # token -> pid of the reader
        self.idle_since = time.monotonic()
        threading.Thread(target=self._watch, daemon=True).start()

    def acquire(self, token: str, pid: int) -> tuple[str, Any]:
        """("ok", {split: ObjectRef}) or ("error", one-line message); the refs are nested, so the caller
        borrows them instead of receiving the arrays through this call."""
        if self.refs is None:
            import ray

            from i2m2_ray.data.arrays import read_splits
            from i2m2_ray.data.format import load_manifest

            try:
                manifest = load_manifest(self.root)
                self.reads += 1
                self.refs = {}
                for split, arrays in read_splits(self.root, manifest, self.modalities, self.splits).items():
                    self.refs[split] = ray.put(arrays)
            except DataError as exc:
                self.refs = None
                return "error", str(exc)
            except BaseException:
                self.refs = None
                raise
        self.leases[token] = pid
        return "ok", self.refs

    def release(self, token: str) -> None:
        self.leases.pop(token, None)
        if not self.leases:
            self.idle_since = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {"reads": self.reads, "leases": len(self.leases), "pid": os.getpid()}

    def expire(self) -> bool:
        """Exit when no reader is alive and none has been for ``LINGER_S`` (run in turn with ``acquire``)."""
        import ray

        for token, pid in list(self.leases.items()):
            if not _alive(pid):
                self.release(token)
        if self.leases or time.monotonic() - self.idle_since < LINGER_S:
            return False
        ray.actor.exit_actor()
        return True

    def _watch(self) -> None:
        import ray

        me = ray.get_runtime_context().current_actor
        while True:
            time.sleep(min(10.0, max(LINGER_S / 4, 0.5)))
            try:
                me.expire.remote()
            except Exception:  # the actor is exiting
                return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Lease:
    """A reader's view of the node's copy: ``arrays`` per split (read-only numpy views)."""

    arrays: dict[str, SplitArrays]
    refs: dict[str, Any]  # the object refs the arrays were read from (tests compare them across readers)
    holder: Any
    token: str
    name: str
    _finalizer: Any = field(default=None, repr=False)


def _release(holder: Any, token: str) -> None:
    try:
        holder.release.remote(token)
    except Exception:  # Ray already shut down: the holder finds the reader dead by its pid
        pass


def holder_name(root: Path, manifest: Manifest, modalities: list[str], splits: tuple[str, ...]) -> str:
    import ray

    node = ray.get_runtime_context().get_node_id()
    return f"i2m2-data-{node[:16]}-{fingerprint(root, manifest, modalities, splits)}"


def _holder(name: str, root: Path, modalities: list[str], splits: tuple[str, ...]) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_restarts=0)(Holder)
    return actor.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                         ).remote(str(root), list(modalities), list(splits))


def lease(root: Path, manifest: Manifest, modalities: list[str], splits: tuple[str, ...]) -> Lease | None:
    """The node's shared copy of ``splits`` (read by its holder on first use), or None when it cannot be
    shared (the object store refused it): the caller then reads its own copy."""
    import ray

    root = Path(root)
    name = holder_name(root, manifest, modalities, splits)
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    for attempt in range(3):  # a holder may exit between lookup and call: the next attempt starts a new one
        holder = _holder(name, root, modalities, splits)
        try:
            status, payload = ray.get(holder.acquire.remote(token, os.getpid()))
            if status == "error":
                raise DataError(payload)
            arrays = {s: ray.get(ref) for s, ref in payload.items()}
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            if attempt == 2:
                _warn(f"no shared copy of {root} ({type(exc).__name__}); this process reads its own")
                return None
            continue
        except ray.exceptions.RayTaskError as exc:  # ray.put refused the splits (object store too small)
            _warn(f"no shared copy of {root} ({str(exc).splitlines()[0]}); this process reads its own")
            return None
        out = Lease(arrays, payload, holder, token, name)
        out._finalizer = weakref.finalize(out, _release, holder, token)
        return out
    return None


def _warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def holder_stats(name: str) -> dict[str, Any]:
    """The holder's read count, live leases and pid (tests and benches)."""
    import ray

    return ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote())
