"""Rows per second from Parquet to training batches, per reader mode.

Datasets (written to a temp dir, deleted afterwards):
- avmnist: image 28x28 + 112x112 spectrogram rows, rebuilt from ../shared/data (real MNIST + FSDD) when
  present, else the MultiBench layout filled with random numbers of the same shapes;
- builtin: image + ragged int16 waveform rows (padding in the collate step);
- mri: fastMRI-layout slices (magnitude + phase 320x320 float32, 4 labels) from generated HDF5 volumes.

Modes: Ray Data streaming (read pipeline per epoch; with the node's decoded-block cache, the default,
and without it), Ray Data materialized once in the driver, plain pyarrow row-group reader inside a
torch DataLoader, and the in-memory reader for reference. Each mode runs 1 + ``--epochs`` epochs; the table reports the
median of the later ones (what every later epoch costs; one epoch is a fraction of a second, so a
single one is mostly noise), epoch 1 (which fills the stream cache), and the median time to the first
batch of the later epochs. Usage: python -m bench.data_throughput [--rows N] [--epochs K] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.common import RESULTS, SHARED_DATA, environment, save
from i2m2_ray.data.format import load_manifest
from i2m2_ray.data.memory import iterate_batches, load_split
from i2m2_ray.data.ray_data import RayBatches, choose_mode, collate, estimate_bytes, needed_columns

BATCH = 64
CONCLUSION = """
Where a streamed epoch's time went before (profiled with cProfile in the driver and `Dataset.stats()`;
the `read_parquet (before)` rows re-run that pipeline): Ray 2.60's Parquet datasource V2 re-lists the
files and re-reads their footers on a fresh pool of 32 `FooterReader` actors on every execution, i.e.
every epoch (ListFiles: 2.1 s wall for 73 ms of CPU at load average 11, 30-60 s when the machine is
more loaded), then packs row groups into 128 MiB read units (4,000 AV-MNIST rows became 3 blocks, so the
first batch waited for most of the file), and `randomize_block_order` on a stream is an all-to-all
barrier that waits for every block. The driver itself spent >90 % of the epoch in
`get_output_blocking` (sleeping); collate was ~0.1 s of 3.2 s. Now (`i2m2_ray/data/ray_source.py`):
footers are read once in the driver, each read task reads whole row groups (one ~13 MiB block for
these datasets; `override_num_blocks` keeps Ray from cutting it into ~20-row pieces), only the needed
columns, `use_threads=False`; a shuffled epoch permutes the read tasks (no barrier; order fixed by
(seed, epoch) via `preserve_order`), and batches are collated in Ray's prefetch threads
(`iter_torch_batches(collate_fn=ArrowBatchCollateFn, prefetch_batches=4)`). Fixed-shape tensor
columns stay Arrow buffers until the collate step; no pandas anywhere.

What bounds a streamed epoch now is Parquet decoding, and within it the list levels of the
`fixed_shape_tensor` columns (stored in Parquet as lists with a repetition and a definition level per
value). Measured with `time.process_time` on the 4,000-row AV-MNIST train file (`pq.read_table`, one
thread, best of 2, 2026-12-02, load average ~9): 0.75 CPU-s as written (fixed-size lists, Snappy),
0.42 without compression, against 0.13 for the same bytes as `fixed_size_binary` columns with Snappy,
0.06 uncompressed, and 0.002 for an uncompressed Arrow IPC file (memory-mapped). The collate step of a
stream is 0.04 CPU-s of that epoch; Ray's per-task overhead is small next to the decode. Threads
(`use_threads=True`), pre-buffering, `iter_batches` and `pyarrow.dataset` all cost the same CPU
(0.3-0.5 CPU-s) within the noise. A materialized epoch pays none of it (it was decoded once), so when
other work holds the CPUs the stream gets at most the ratio of CPU costs (about 0.4-0.6x); with a CPU
to spare the decode runs beside the consumer. What lifts the bound (`ray_source.py`, 2026-12-02): each
node keeps a streamed split's decoded blocks as uncompressed Arrow IPC files and later epochs map them
(the `decoded cache` rows; epoch 1 decodes and writes them). With decoding gone, two costs were left,
both found with py-spy on the driver and by timing 7-8 cached epochs per setting (`/tmp` scripts):
(1) Ray Data's streaming executor spends driver CPU per block (0.3 CPU-s per epoch with 2 read tasks,
0.7 with 16; the time did not move when `ray.wait`'s 0.1 s poll in the executor was cut to 0.01 s), so
a streamed split is now read in 128 MiB units, Ray Data's own default block size (a cached 4,000-row
AV-MNIST epoch, one run: 0.42 s in 64 MiB units, 0.28 s in 128, 0.21 s materialized; another: 0.77 s
in 16 MiB units, 0.32 s in 128); (2) Ray's
local shuffle buffer copies every row once more in the consumer (`take` + concatenating the tensor
columns: a third of the driver's samples), on top of the copy the read task makes when it puts its
block into the object store. Larger units would coarsen a shuffle that relied on that buffer, so a
shuffled stream now permutes the rows inside each read task (seeded by seed, epoch and unit; the cost
lands in the read task's process, beside the consumer) and the consumer takes batches straight from
the blocks (`iter_torch_batches(preshuffled=True)`: 0.71x materialized with the buffer, 1.00x without,
same run). A materialized split still uses the buffer, over its blocks in random order. The buffer
itself is now capped at about 128 MiB of rows (1,024 fastMRI slices were 0.8 GB per worker; now 256
with batch 64). The MRI split here is 1,120 slices (40 generated volumes), so one epoch is about a
second and Ray Data's per-epoch start-up (first batch 0.1-0.25 s, against 0.03-0.16 materialized) is a
small part of it; on a 240-slice split it was most of the epoch.

Which mode the trainer picks: `choose_mode` picks **materialize** whenever the needed columns fit in
half the object store (all three datasets here; also the full AV-MNIST train split, ~2.9 GB, in the
7.3 GB default store of this 24 GB machine; the full fastMRI knee train split, ~28 GB, streams), else
**stream**. For single-process runs on one machine the in-memory reader (memory.py) needs no Ray.
"""


class ParquetRowGroups(torch.utils.data.IterableDataset):
    """Plain pyarrow: stream a split's row groups and collate them into batches (no Ray)."""

    def __init__(self, root: Path, split: str) -> None:
        self.root, self.split = root, split
        self.manifest = load_manifest(root)

    def __iter__(self):
        cols = needed_columns(self.manifest)
        for fname in self.manifest.splits[self.split].files:
            for rb in pq.ParquetFile(self.root / fname).iter_batches(batch_size=BATCH, columns=cols):
                yield collate(pa.Table.from_batches([rb]), self.manifest)


def read_parquet_stream(root: Path, split: str):
    """The streaming pipeline this bench measured first: ``read_parquet`` per epoch (footers re-read on an
    actor pool, 128 MiB read units), ``randomize_block_order`` (a barrier), collate in the consumer."""
    import ray.data

    manifest = load_manifest(root)
    ds = ray.data.read_parquet([str(root / f) for f in manifest.splits[split].files])
    ds = ds.select_columns(needed_columns(manifest))

    def epoch():
        kwargs = {"batch_size": BATCH, "batch_format": "pyarrow", "local_shuffle_buffer_size": 1024,
                  "local_shuffle_seed": 0}
        for table in ds.randomize_block_order(seed=0).iter_batches(**kwargs):
            yield collate(table, manifest)
    return epoch


def _epoch(make_iter) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    first = None
    rows = 0
    for _, y in make_iter():
        if first is None:
            first = time.perf_counter() - t0
        rows += len(y)
    return rows, time.perf_counter() - t0, first or 0.0


def bench_dataset(name: str, root: Path, cache: Path, split: str = "train", epochs: int = 5) -> list[dict]:
    results = []

    def record(mode: str, make_iter, setup_s: float = 0.0) -> None:
        rows1, wall1, _ = _epoch(make_iter)
        later = [_epoch(make_iter) for _ in range(epochs)]
        rows = later[0][0]
        wall = statistics.median(w for _, w, _ in later)
        first = statistics.median(f for _, _, f in later)
        results.append({"dataset": name, "mode": mode, "rows": rows, "epoch_s": round(wall, 3),
                        "rows_per_s": round(rows / wall), "epoch1_rows_per_s": round(rows1 / wall1),
                        "first_batch_s": round(first, 3), "setup_s": round(setup_s, 2)})
        print(f"  {name:8s} {mode:32s} {rows / wall:9.0f} rows/s  first batch {first:6.2f} s  setup {setup_s:5.2f} s",
              flush=True)

    t = time.perf_counter()
    stream = RayBatches(root, split, BATCH, mode="stream", shuffle=True, cache_dir=cache / name)
    record("ray-stream (decoded cache)", lambda: stream.iter_batches(0), time.perf_counter() - t)
    t = time.perf_counter()
    plain = RayBatches(root, split, BATCH, mode="stream", shuffle=True)
    record("ray-stream (no cache)", lambda: plain.iter_batches(0), time.perf_counter() - t)
    t = time.perf_counter()
    before = read_parquet_stream(root, split)
    record("ray-stream read_parquet (before)", lambda: before(), time.perf_counter() - t)
    t = time.perf_counter()
    mat = RayBatches(root, split, BATCH, mode="materialize", shuffle=True)
    record("ray-materialized", lambda: mat.iter_batches(0), time.perf_counter() - t)
    loader = torch.utils.data.DataLoader(ParquetRowGroups(root, split), batch_size=None, num_workers=1)
    record("pyarrow+DataLoader(1w)", lambda: iter(loader))
    loader0 = torch.utils.data.DataLoader(ParquetRowGroups(root, split), batch_size=None, num_workers=0)
    record("pyarrow+DataLoader(0w)", lambda: iter(loader0))
    t = time.perf_counter()
    mem = load_split(root, split)
    record("in-memory (memory.py)", lambda: iterate_batches(mem, BATCH, shuffle=True), time.perf_counter() - t)
    materialized = next(r["rows_per_s"] for r in results if r["mode"] == "ray-materialized")
    for r in results:
        r["vs_materialized"] = round(r["rows_per_s"] / materialized, 2)
        r["auto_mode"] = choose_mode(root, [split])
        r["train_bytes"] = estimate_bytes(root, [split])
    return results


def make_datasets(tmp: Path, rows: int) -> dict[str, Path]:
    from i2m2_ray.data.avmnist import AVMNISTRawConfig, prepare_avmnist_raw
    from i2m2_ray.data.fastmri import FastMRIConfig, prepare_fastmri
    from i2m2_ray.data.multibench import prepare_avmnist
    from i2m2_ray.data.synthetic import SyntheticConfig, generate

    shared = SHARED_DATA
    out = {}
    if (shared / "mnist").is_dir() and (shared / "fsdd" / "recordings").is_dir():
        cfg = AVMNISTRawConfig(train_limit=rows + 500, test_limit=200, val_size=500)
        out["avmnist"] = prepare_avmnist_raw(shared / "mnist", shared / "fsdd", tmp / "avmnist", cfg)
    else:
        src = tmp / "mb"
        rng = np.random.default_rng(0)
        (src / "image").mkdir(parents=True)
        (src / "audio").mkdir()
        for part, n in (("train", rows + 500), ("test", 200)):
            np.save(src / f"{part}_labels.npy", rng.integers(0, 10, n))
            np.save(src / "image" / f"{part}_data.npy", rng.standard_normal((n, 784)))
            np.save(src / "audio" / f"{part}_data.npy", rng.random((n, 112, 112)))
        out["avmnist"] = prepare_avmnist(src, tmp / "avmnist", val_size=500)
    out["builtin"] = generate(SyntheticConfig(train_size=rows, val_size=200, test_size=200), tmp / "builtin")

    import h5py

    vols = max(6, rows // 100)  # ~rows/4 train slices: an epoch long enough that per-epoch start-up is not all
    ids = [f"file{2000000 + i}" for i in range(vols)]
    rng = np.random.default_rng(0)
    (tmp / "mri_src").mkdir()
    for vid in ids:
        k = (rng.standard_normal((40, 640, 368), dtype=np.float32) * 1e-4).astype(np.complex64)
        with h5py.File(tmp / "mri_src" / f"{vid}.h5", "w") as f:
            f.create_dataset("kspace", data=k)
            f.create_dataset("ismrmrd_header", data=np.bytes_('<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"/>'))
            f.attrs["acquisition"] = "CORPD_FBK"
    (tmp / "knee.csv").write_text("file,slice,study_level,x,y,width,height,label\n"
                                  + "".join(f"{v},{s},No,1,1,5,5,Meniscus Tear\n" for v in ids for s in (10, 11)))
    (tmp / "list.csv").write_text("\n".join(ids) + "\n")
    out["mri"] = prepare_fastmri(tmp / "mri_src", tmp / "knee.csv", tmp / "list.csv", tmp / "mri", FastMRIConfig())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000, help="train rows for avmnist/builtin (mri: ~rows/4 slices)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs after the first; the table gives their median")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import ray

    from i2m2_ray.cluster import init_ray

    load_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    init_ray(num_cpus=os.cpu_count(), log_to_driver=False, quiet=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="i2m2-bench-") as tmp:
        t = time.perf_counter()
        datasets = make_datasets(Path(tmp), args.rows)
        print(f"prepared datasets in {time.perf_counter() - t:.1f} s", flush=True)
        results = []
        for name, root in datasets.items():
            results += bench_dataset(name, root, Path(tmp) / "stream-cache", epochs=args.epochs)
    ray.shutdown()

    later = f"rows/s (median, epochs 2-{args.epochs + 1})"
    rows = [{"dataset": r["dataset"], "mode": r["mode"], later: r["rows_per_s"],
             "x materialized": r["vs_materialized"], "rows/s (epoch 1)": r["epoch1_rows_per_s"],
             "first batch s": r["first_batch_s"], "setup s": r["setup_s"],
             "rows": r["rows"],
             "auto mode": f"{r['auto_mode']} ({r['train_bytes'] / 2**20:.0f} MiB)"} for r in results]
    env = environment(command="python -m bench.data_throughput " + " ".join(sys.argv[1:]), gpu_used="no",
                      batch_size=BATCH, load_average_1m=f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    save("data_throughput", "Data throughput: Parquet -> training batches", env, rows, notes=CONCLUSION,
         out=args.out, payload={"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
