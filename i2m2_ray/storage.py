"""Experiment storage: a local directory or an object-store URI, read and written through ``pyarrow.fs``.

On a cluster whose nodes share no disk, every file that resume and report read (``state.json``,
``experiment.yaml``, each trial's ``model.pt`` / ``final.json``, the tables) lives in object storage
(``s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http``, ``gs://...`` where pyarrow has it;
credentials from the standard environment variables). A plain path stays a local directory, written
with fsutil's atomic writes; an S3 object appears whole or not at all, so remote writes are atomic too.
Paths inside the experiment are relative to its root; ``location`` turns one into a string another
process (a trial on another node) can read with ``read_location`` / ``local_copies``.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from i2m2_ray.errors import CheckpointError, ConfigError
from i2m2_ray.fsutil import atomic_write_bytes


def is_uri(location: str | Path) -> bool:
    """``s3://...``, ``gs://...`` (not a local path, not ``file://``)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


@functools.lru_cache(maxsize=16)
def _filesystem(base_uri: str):
    """One pyarrow filesystem per (scheme, bucket, options): opening one resolves credentials."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(base_uri)[0]


def _split(uri: str) -> tuple[Any, str]:
    """(filesystem, path on it) for a URI; a bad scheme or option fails in one line."""
    parts = urlsplit(uri)
    if not parts.netloc:
        raise ConfigError(f"{uri}: no bucket in the storage URI (expected {parts.scheme}://bucket/prefix)")
    try:
        fs = _filesystem(urlunsplit((parts.scheme, parts.netloc, "", parts.query, "")))
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / ValueError for bad URIs
        raise ConfigError(f"{uri}: unusable storage URI ({str(exc).splitlines()[0]})") from None
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


class Storage:
    """The experiment root on its filesystem; every method takes a path relative to the root."""

    def __init__(self, location: str | Path) -> None:
        text = str(location)
        self.remote = is_uri(text)
        if self.remote:
            self.uri = text
            self.fs, self.root = _split(text)
        else:
            import pyarrow.fs as pafs

            path = Path(text.removeprefix("file://")).expanduser().resolve()
            self.uri, self.fs, self.root = str(path), pafs.LocalFileSystem(), str(path)

    @classmethod
    def on(cls, fs: Any, root: str) -> Storage:
        """A root on a filesystem already open (a Tune result's ``filesystem`` and ``path``)."""
        import pyarrow.fs as pafs

        storage = cls.__new__(cls)
        storage.fs, storage.root, storage.uri = fs, root.rstrip("/"), root
        storage.remote = not isinstance(fs, pafs.LocalFileSystem)
        return storage

    def __str__(self) -> str:
        return self.uri

    def path(self, rel: str = "") -> str:
        """``rel`` on the filesystem (an absolute local path is kept: ledgers of earlier versions)."""
        if not rel:
            return self.root
        if not self.remote and Path(rel).is_absolute():
            return rel
        return f"{self.root}/{rel.strip('/')}"

    def location(self, rel: str) -> str:
        """``rel`` as another process on any node opens it: an absolute path, or a URI with this one's options."""
        if not self.remote:
            return self.path(rel)
        parts = urlsplit(self.uri)
        return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{rel.strip('/')}", parts.query, ""))

    def tune_args(self) -> dict[str, Any]:
        """``RunConfig`` / ``Tuner.restore`` keywords: the root and, for object storage, its filesystem."""
        return {"storage_path": self.root, "storage_filesystem": self.fs if self.remote else None}

    def check(self) -> None:
        """Fail in one line, before Ray starts, when the bucket is missing or the endpoint does not answer."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        bucket = self.root.split("/")[0]
        try:
            info = self.fs.get_file_info(bucket)
        except OSError as exc:
            raise ConfigError(f"{self.uri}: storage unreachable ({str(exc).splitlines()[0]}); check the "
                              "endpoint_override and the AWS_* credential variables") from None
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"{self.uri}: bucket {bucket!r} does not exist; create it first")

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        try:
            return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound
        except OSError as exc:
            raise ConfigError(f"{self.location(rel)}: storage unreachable ({str(exc).splitlines()[0]})") from None

    def is_file(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def list(self, rel: str = "", recursive: bool = False) -> list[str]:
        """Files under ``rel`` (relative to it), sorted; none when it does not exist."""
        import pyarrow.fs as pafs

        base = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
        return sorted(i.path[len(base):].lstrip("/") for i in infos if i.type == pafs.FileType.File)

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as fh:
                return fh.read()
        except FileNotFoundError:
            raise ConfigError(f"{self.location(rel)}: not found") from None

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str) -> Any:
        """A JSON file this project wrote; a truncated or hand-edited one fails in one line naming it."""
        try:
            return json.loads(self.read_bytes(rel))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.location(rel)}: corrupt JSON ({exc}); restore it or use a new output_dir") \
                from None

    def read_yaml(self, rel: str) -> Any:
        """A YAML mapping; a malformed file fails naming the file and line (as ``config.load_yaml``)."""
        import yaml

        from i2m2_ray.config import safe_load

        where = self.location(rel)
        try:
            return safe_load(self.read_text(rel), where)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}{f':{mark.line + 1}' if mark else ''}: malformed YAML ({problem})") from None

    def write_yaml(self, rel: str, data: Any) -> str:
        import yaml

        return self.write_text(rel, yaml.safe_dump(data, sort_keys=False))

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Whole or not at all: a local temporary file renamed into place, or one S3 object."""
        if not self.remote:
            return str(atomic_write_bytes(self.path(rel), data))
        with self.fs.open_output_stream(self.path(rel)) as fh:
            fh.write(data)
        return self.location(rel)

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, data: Any) -> str:
        return self.write_text(rel, json.dumps(data, indent=2, default=float))

    def download(self, rel: str, dest: str | Path) -> Path:
        """Copy one file to a local scratch path (atomically: ranks on one node may race)."""
        return atomic_write_bytes(dest, self.read_bytes(rel))

    def upload_dir(self, local_dir: str | Path, rel: str) -> None:
        """Every file under ``local_dir`` to ``rel`` (a trial's artifacts, from the node that made them)."""
        import pyarrow.fs as pafs

        if not self.remote and Path(self.path(rel)).resolve() == Path(local_dir).resolve():
            return
        # Arrow creates the subdirectories of a copied tree but not its root: a local destination
        # without it fails ("Failed to open local file") unless Ray's background sync made it first.
        self.fs.create_dir(self.path(rel), recursive=True)
        pafs.copy_files(str(local_dir), self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)


    def publish(self, run_dir: str | Path, names: Iterable[str]) -> None:
        """The named files and folders of a run, from this node's scratch to this directory (those that exist).

        Synchronous, so whoever reads them after the run returns finds them (Ray's ``sync_artifacts``
        uploads in the background, on its own period)."""
        run_dir = Path(run_dir)
        if not self.remote and Path(self.root).resolve() == run_dir.resolve():  # the run wrote in place
            return
        for name in names:
            src = run_dir / name
            if src.is_dir():
                self.upload_dir(src, name)
            elif src.is_file():
                self.write_bytes(name, src.read_bytes())


def open_storage(location: str | Path | Storage) -> Storage:
    return location if isinstance(location, Storage) else Storage(location)


def _parent_and_name(location: str) -> tuple[Storage, str]:
    if not is_uri(location):
        path = Path(location).expanduser()
        return Storage(path.parent), path.name
    parts = urlsplit(location)
    parent, _, name = parts.path.rstrip("/").rpartition("/")
    return Storage(urlunsplit((parts.scheme, parts.netloc, parent, parts.query, ""))), name


def read_location(location: str) -> bytes:
    """The bytes of one file named by ``Storage.location`` (a local path or a URI)."""
    storage, name = _parent_and_name(location)
    return storage.read_bytes(name)


@contextmanager
def local_copies(files: dict[str, str]) -> Iterator[dict[str, Path]]:
    """``key -> local path`` for ``key -> location``: local paths as they are, objects downloaded to scratch
    (deleted afterwards). A missing object fails like a missing local file."""
    with tempfile.TemporaryDirectory(prefix="i2m2-fetch-") as tmp:
        out: dict[str, Path] = {}
        for key, location in files.items():
            if not is_uri(location):
                out[key] = Path(location).expanduser()
                continue
            storage, name = _parent_and_name(location)
            try:
                out[key] = storage.download(name, Path(tmp) / key / name)
            except ConfigError:
                raise CheckpointError(f"{location}: state dict not found") from None
        yield out


def lock_dir(storage: Storage) -> Path:
    """The local directory whose ``flock`` stands for the experiment: the root itself, or for object storage a
    directory on this machine keyed by the URI (two drivers on different machines are NOT excluded)."""
    if not storage.remote:
        return Path(storage.root)
    import hashlib

    key = hashlib.sha256(storage.uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "i2m2-locks" / key
