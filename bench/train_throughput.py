"""CPU: the launcher's cost. Samples/s and fixed start-up cost of each path ``run_training`` can take.

Rows (same built-in dataset, variant, global batch 40, seed):
- plain loop: ``train(cfg)`` called directly (the reference);
- launcher, 1 worker: ``run_training(cfg)`` with workers=1 (auto -> in-process; target >= 0.9 of plain,
  start-up <= 2 s);
- Ray Train, 1 worker: launcher=ray (a TorchTrainer with one worker; what auto avoids);
- Ray Train, 2 workers DDP: workers=2, one CPU each.
Samples/s is the median of the per-epoch ``train/samples_per_s`` (epochs 2..E, global rate) read
back from TensorBoard; the fixed cost is call -> first training step, i.e. the wall time of the
epoch-1 event minus that epoch's duration, with ``ray.init`` done before the clock starts.
Usage: python -m bench.train_throughput [--epochs 3] [--train-size 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, environment, save


def read_scalars(tb_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in ("train/samples_per_s", "time/epoch_s"):
            out.setdefault(tag, []).extend(acc.Scalars(tag))
    return out


def measure(label: str, run, run_dir: Path) -> dict:
    t0 = time.time()
    run()
    total = time.time() - t0
    sc = read_scalars(run_dir / "tensorboard")
    rates = [e.value for e in sorted(sc["train/samples_per_s"], key=lambda e: e.step) if e.step >= 2]
    first = min(sc["time/epoch_s"], key=lambda e: e.step)
    return {"path": label, "samples_per_s": round(statistics.median(rates), 1),
            "startup_s": round(first.wall_time - first.value - t0, 2), "total_s": round(total, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import ray

    from i2m2_ray.cluster import init_ray
    from i2m2_ray.data.synthetic import SyntheticConfig, generate
    from i2m2_ray.train.config import load_train_config
    from i2m2_ray.train.distributed import run_training
    from i2m2_ray.train.loop import train

    work = Path(tempfile.mkdtemp(prefix="i2m2-train-bench-"))
    data = generate(SyntheticConfig(train_size=args.train_size, val_size=200, test_size=200), work / "data")

    def cfg(name: str, *over: str):
        return load_train_config(None, [f"run_dir={work / name}", f"dataset.path={data}", "variant=i2m2:lf",
                                        f"epochs={args.epochs}", "patience=null", "optim.batch_size=40", *over])

    load_start = os.getloadavg()[0]  # a shared machine: other users' load skews every rate
    t = time.perf_counter()
    init_ray(num_cpus=2, log_to_driver=False, quiet=True)
    ray_init_s = time.perf_counter() - t
    rows = []
    try:
        c = cfg("plain", "threads=2")
        rows.append(measure("plain loop: train(cfg), 2 threads", lambda: train(c, console=False), work / "plain"))
        c = cfg("auto1", "threads=2")
        rows.append(measure("run_training, workers=1 (auto: in-process), 2 threads",
                            lambda: run_training(c, console=False), work / "auto1"))
        c = cfg("ray1", "launcher=ray", "cpus_per_worker=2", "threads=2")
        rows.append(measure("run_training, launcher=ray, 1 worker x 2 CPU", lambda: run_training(c), work / "ray1"))
        c = cfg("ray2", "workers=2", "threads=1")
        rows.append(measure("run_training, workers=2 DDP, 2 x 1 CPU", lambda: run_training(c), work / "ray2"))
    finally:
        ray.shutdown()
    plain = rows[0]["samples_per_s"]
    for row in rows:
        row["vs_plain"] = round(row["samples_per_s"] / plain, 3)

    env = environment(command="python -m bench.train_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
                      note="shared machine; timings +-30 %", dataset=f"built-in, {args.train_size} train rows",
                      variant="i2m2:lf", global_batch=40, epochs=args.epochs,
                      **{"ray_init_s (excluded)": round(ray_init_s, 2),
                         "load_average_1m (start, end)": f"{load_start:.1f}, {os.getloadavg()[0]:.1f}"})
    notes = ("Targets: 1 worker through the launcher >= 0.9 x plain samples/s, start-up <= 2 s (excluding ray.init).\n"
             "startup_s = call -> first training step; samples_per_s = median global rate over epochs 2..E.")
    save("train_throughput", "Training launcher on CPU: throughput and fixed cost to first step", env, rows,
         notes=notes, columns=["path", "samples_per_s", "vs_plain", "startup_s", "total_s"], out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
