"""What object storage costs: the smoke experiment with a local output_dir vs S3 (moto's server on loopback).

Runs ``python -m i2m2_ray.tune smoke`` alternately with ``output_dir=<tmp dir>`` and
``output_dir=s3://bucket/prefix?endpoint_override=127.0.0.1:PORT&scheme=http`` (a ThreadedMotoServer in this
process, dummy credentials in the environment), in one run so both see the same machine load. Per run: end-to-end
wall time and the fixed cost per trial (phase wall x concurrent trials / trials - mean in-trial time, as
bench/trial_overhead.py), read from each experiment's state.json through i2m2_ray.storage. Target: S3 <= 1.25x local.
Loopback S3 has no network latency: it measures the service's extra work (uploads, checkpoint copies, reads
through pyarrow), not a real bucket's round trips.
Usage: python -m bench.storage_overhead [--repeats 2] [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, environment, save
from bench.tune_default import LoadSampler, run_service
from i2m2_ray.storage import open_storage

CONCURRENT = 2  # the smoke experiment: 1 CPU per trial on --num-cpus 2
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_s3() -> tuple[Any, str]:
    """A moto S3 server on a free loopback port with one bucket; returns (server, endpoint host:port)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(CREDENTIALS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1").create_bucket(
        Bucket="bench")
    return server, f"127.0.0.1:{port}"


def measure(storage: str, output_dir: str, overrides: list[str]) -> dict[str, Any]:
    rc, wall, output = run_service("smoke", output_dir, overrides, num_cpus=CONCURRENT)
    if rc != 0:
        raise SystemExit(f"{storage}: the service failed (exit {rc}):\n{output[-2000:]}")
    phases = open_storage(output_dir).read_json("state.json")["phases"]
    rows = [r for p in phases.values() for r in p.get("trials", p.get("runs", []))]
    inside = [r["time_s"] for r in rows if r.get("time_s") is not None]
    phase_wall = sum(p["wall_s"] for p in phases.values())
    return {"storage": storage, "trials": len(rows), "end to end s": round(wall, 1),
            "phases wall s": round(phase_wall, 1),
            "fixed cost per trial s": round(phase_wall * CONCURRENT / len(rows) - statistics.mean(inside), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs per storage, interleaved")
    ap.add_argument("--smoke", action="store_true", help="one run each, one variant")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    overrides = ["variants=[unimodal:image]"] if args.smoke else []
    repeats = 1 if args.smoke else args.repeats
    out = args.out or (Path(tempfile.gettempdir()) / "i2m2-bench-smoke" if args.smoke else RESULTS)
    server, endpoint = start_s3()
    try:
        with tempfile.TemporaryDirectory(prefix="i2m2-storage-") as tmp, LoadSampler() as load:
            runs = []
            for i in range(repeats):
                runs.append(measure("local", str(Path(tmp) / f"local-{i}"), overrides))
                runs.append(measure("s3 (moto, loopback)",
                                    f"s3://bench/run-{i}?endpoint_override={endpoint}&scheme=http", overrides))
    finally:
        server.stop()
    rows = []
    for storage in ("local", "s3 (moto, loopback)"):
        mine = [r for r in runs if r["storage"] == storage]
        rows.append({"storage": storage, "runs": len(mine), "trials per run": mine[0]["trials"],
                     "end to end s (mean)": round(statistics.mean(r["end to end s"] for r in mine), 1),
                     "fixed cost per trial s (mean)": round(statistics.mean(r["fixed cost per trial s"] for r in mine),
                                                            2)})
    local, s3 = rows
    for key in ("end to end s (mean)", "fixed cost per trial s (mean)"):
        s3[f"{key.split(' (')[0]} / local"] = round(s3[key] / local[key], 3)
        local[f"{key.split(' (')[0]} / local"] = 1.0
    env = environment(command="python -m bench.storage_overhead " + " ".join(sys.argv[1:]),
                      experiment="search_spaces/smoke.yaml " + " ".join(overrides), loadavg_1min_during=load.summary())
    notes = ("Runs alternate local / S3 so both see the same load. The S3 side uploads each trial's files at its "
             "first report and end, copies checkpoints (with the best weights) to the bucket on every report, and "
             "the driver reads final.json and the tables back through pyarrow. Target: S3 <= 1.25x local.")
    save("storage_overhead", "Experiment storage: local directory vs S3 (moto on loopback)", env, rows,
         notes=notes, out=out, payload={"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
