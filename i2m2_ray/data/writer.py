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
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from i2m2_ray.data.format import MANIFEST, Manifest, SplitSpec, check_output, publish
from i2m2_ray.errors import DataError

__all__ = ["DatasetWriter", "Progress", "check_output"]


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
