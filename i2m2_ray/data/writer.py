"""Streaming dataset writer: splits are written chunk by chunk into a hidden sibling directory,
validated, and only then renamed into place, so a failed or interrupted conversion never leaves a
half-written dataset and never touches an existing one.

Converters stream because the full sets do not fit in memory as tables (AV-MNIST spectrograms are
about 3.5 GB as float32; fastMRI volumes are larger still).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from i2m2_ray.data.format import MANIFEST, Manifest, SplitSpec, load_manifest
from i2m2_ray.errors import DataError


class Progress:
    """Rows-done reporting on stderr, at most every ``every_s`` seconds; silent when disabled."""

    def __init__(self, label: str, total: int | None, enabled: bool = True, every_s: float = 2.0) -> None:
        self.label, self.total, self.enabled, self.every_s = label, total, enabled, every_s
        self.done = self.printed = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            self._print(now)

    def close(self) -> None:
        if self.enabled and self.printed != self.done:
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        self.printed = self.done
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = 100.0 * self.done / self.total
            msg = f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {elapsed:.1f} s, {rate:.0f}/s"
        else:
            msg = f"{self.label}: {self.done} {elapsed:.1f} s, {rate:.0f}/s"
        print(msg, file=sys.stderr, flush=True)


def check_output(out_dir: str | Path, overwrite: bool) -> None:
    """Fail before any work if ``out_dir`` exists and may not, or must not, be replaced.

    Only one of our datasets (a directory with a valid manifest) is ever replaced: ``--overwrite``
    pointed at a home directory or a source folder by mistake must not delete it.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not overwrite:
        raise DataError(f"{out_dir}: output directory already exists (pass --overwrite to replace it)")
    try:
        load_manifest(out_dir)
    except DataError:
        raise DataError(f"{out_dir}: exists and is not a prepared dataset (no valid {MANIFEST}); "
                        "refusing to replace it") from None


@contextmanager
def writing(out_dir: Path) -> Iterator[None]:
    """Filesystem failures while writing a dataset (no permission, no such parent, disk full) are one line."""
    try:
        yield
    except OSError as exc:
        detail = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc).splitlines()[0]
        raise DataError(f"{out_dir}: cannot write the dataset ({detail})") from None


def publish(tmp: Path, out_dir: Path, overwrite: bool, exist_ok: bool = False) -> Path:
    """Rename a finished dataset from ``tmp`` into place (removing ``tmp`` if it is not used).

    Without ``overwrite`` an existing ``out_dir`` is never touched: if a concurrent writer published
    first, its dataset stays (and is returned when ``exist_ok``). With ``overwrite`` the existing
    dataset, checked again to be one, is moved aside and deleted only once the new one is in place.
    """
    try:
        with writing(out_dir):
            for _ in range(3):  # another writer may publish between our two renames: retry, then give up
                old = None
                if overwrite and (out_dir.exists() or out_dir.is_symlink()):
                    check_output(out_dir, overwrite=True)
                    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
                    try:
                        os.replace(out_dir, old / "d")
                    except FileNotFoundError:  # a concurrent writer moved it first
                        pass
                try:
                    os.replace(tmp, out_dir)  # refuses a non-empty directory: an existing dataset survives
                    return out_dir
                except OSError:
                    if old is not None and (old / "d").exists() and not out_dir.exists():
                        os.replace(old / "d", out_dir)  # not a race: put the old dataset back, then fail
                        raise
                    if not overwrite:
                        if exist_ok:
                            load_manifest(out_dir)  # the concurrent writer's dataset must be complete
                            return out_dir
                        raise DataError(f"{out_dir}: output directory already exists (pass --overwrite to "
                                        "replace it)") from None
                finally:
                    if old is not None:
                        shutil.rmtree(old, ignore_errors=True)
            raise DataError(f"{out_dir}: replaced by another process while writing; kept its dataset")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class DatasetWriter:
    """Write a dataset split by split, chunk by chunk; ``commit`` validates and renames.

    Use as a context manager: leaving the block with an exception removes the temporary
    directory and leaves ``out_dir`` exactly as it was.
    """

    def __init__(self, out_dir: str | Path, manifest: Manifest, *, overwrite: bool = False,
                 row_group_size: int = 256) -> None:
        self.out_dir = Path(out_dir).expanduser()
        check_output(self.out_dir, overwrite)
        self.overwrite = overwrite
        self.manifest = manifest
        self.row_group_size = row_group_size
        with writing(self.out_dir):
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp.", dir=self.out_dir.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._rows: dict[str, int] = {}
        self._schema: pa.Schema | None = None
        self.committed = False

    def write(self, split: str, table: pa.Table) -> None:
        """Append rows to a split; every split must share one schema."""
        if self._schema is None:
            meta = dict(table.schema.metadata or {})
            meta[b"i2m2_ray.dataset"] = self.manifest.name.encode()
            self._schema = table.schema.with_metadata(meta)
        table = table.replace_schema_metadata(self._schema.metadata)
        if not table.schema.equals(self._schema, check_metadata=False):
            raise DataError(f"{self.tmp / (split + '.parquet')}: chunk schema differs from the first chunk "
                            f"({table.schema.to_string(show_schema_metadata=False)!r})")
        with writing(self.out_dir):
            if split not in self._writers:
                self._writers[split] = pq.ParquetWriter(self.tmp / f"{split}.parquet", self._schema)
                self._rows[split] = 0
            if table.num_rows:
                self._writers[split].write_table(table, row_group_size=self.row_group_size)
        self._rows[split] += table.num_rows

    def commit(self, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
        """Close files, write the manifest, validate everything, then move into place."""
        from i2m2_ray.data.validate import validate_dataset

        for split in splits:
            if split not in self._writers:
                raise DataError(f"{self.tmp / (split + '.parquet')}: split {split!r} is empty (no rows produced)")
        with writing(self.out_dir):
            for w in self._writers.values():
                w.close()
            self._writers.clear()
            self.manifest.splits = {s: SplitSpec(rows=self._rows[s], files=[f"{s}.parquet"]) for s in splits}
            (self.tmp / MANIFEST).write_text(self.manifest.to_json())
        validate_dataset(self.tmp, deep=True)
        self.committed = True  # publish removes the temporary directory whatever happens
        return publish(self.tmp, self.out_dir, self.overwrite)

    def abort(self) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - cleanup must not mask the original error
                pass
        self._writers.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.committed:
            self.abort()


def write_dataset(
    out_dir: str | Path,
    manifest: Manifest,
    tables: dict[str, pa.Table],
    row_group_size: int = 256,
    overwrite: bool = False,
    exist_ok: bool = False,
) -> Path:
    """Write splits + manifest into a sibling temp dir, then rename: no half-written datasets."""
    out_dir = Path(out_dir).expanduser()
    check_output(out_dir, overwrite or exist_ok)
    with writing(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with writing(out_dir):
            for split, table in tables.items():
                fname = f"{split}.parquet"
                meta = dict(table.schema.metadata or {})
                meta[b"i2m2_ray.dataset"] = manifest.name.encode()
                pq.write_table(table.replace_schema_metadata(meta), tmp / fname, row_group_size=row_group_size)
                manifest.splits[split] = SplitSpec(rows=table.num_rows, files=[fname])
            (tmp / MANIFEST).write_text(manifest.to_json())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish(tmp, out_dir, overwrite, exist_ok)
