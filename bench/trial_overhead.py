"""Fixed cost per trial of the search service (issue 6, cost tables).

Runs ``python -m i2m2_ray.tune smoke`` cut to one variant (N trials of one epoch on 80 rows, so
training takes milliseconds) and reads each phase's wall time and each trial's own time
(Tune's ``time_total_s``: model build, data load, the epoch, checkpoint) from state.json.
Fixed cost per trial = phase wall x concurrent trials / N - mean in-trial time: what Ray Tune, the
trial actor and, for several workers, the Ray Train worker group add around a trial's own work.
Two layouts: 1 worker per trial in-process (the default, 2 trials at once on 2 CPUs) and 2 Ray Train
workers per trial (one trial at a time).
Usage: python -m bench.trial_overhead [--trials 6] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, environment, save
from bench.tune_default import LoadSampler, run_service

# The shipped smoke experiment (1 epoch, 1 final seed) cut to one variant and 80 training rows.
TINY = ["variants=[unimodal:image]", "dataset.builtin.train_size=80", "dataset.builtin.val_size=40",
        "dataset.builtin.test_size=40"]
LAYOUTS = {"1 worker, in-process (2 trials at once)": (["resources.workers=1", "resources.cpus_per_trial=1"], 2),
           "2 Ray Train workers x 0.5 CPU (1 trial at a time)":
               (["resources.workers=2", "resources.cpus_per_trial=0.5"], 1)}


def measure(label: str, overrides: list[str], concurrency: int, trials: int, tmp: Path) -> dict[str, Any]:
    out_dir = tmp / label.split()[0]
    rc, wall, output = run_service("smoke", out_dir, [*TINY, f"budget.trials={trials}", *overrides], num_cpus=2)
    if rc != 0:
        raise SystemExit(f"{label}: the service failed (exit {rc}):\n{output[-2000:]}")
    phases = json.loads((out_dir / "state.json").read_text())["phases"]
    search = phases["search-unimodal-image"]
    inside = [t["time_s"] for t in search["trials"] if t.get("time_s") is not None]
    slot = search["wall_s"] * concurrency / len(search["trials"])
    return {"layout": label, "trials": len(search["trials"]), "phase wall s": round(search["wall_s"], 1),
            "wall per trial slot s": round(slot, 2), "in-trial time s (mean)": round(statistics.mean(inside), 2),
            "fixed cost per trial s": round(slot - statistics.mean(inside), 2),
            "final phase s (1 run)": round(phases["final"]["wall_s"], 1),
            "end to end s": round(wall, 1),
            "start-up + table s": round(wall - sum(p["wall_s"] for p in phases.values()), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--smoke", action="store_true", help="2 trials, first layout only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    layouts = dict(list(LAYOUTS.items())[:1]) if args.smoke else LAYOUTS
    trials = 2 if args.smoke else args.trials
    out = args.out or (Path(tempfile.gettempdir()) / "i2m2-bench-smoke" if args.smoke else RESULTS)
    with tempfile.TemporaryDirectory(prefix="i2m2-overhead-") as tmp, LoadSampler() as load:
        rows = [measure(label, o, c, trials, Path(tmp)) for label, (o, c) in layouts.items()]
    env = environment(command="python -m bench.trial_overhead " + " ".join(sys.argv[1:]),
                      experiment="search_spaces/smoke.yaml + " + " ".join(TINY), loadavg_1min_during=load.summary())
    notes = ("A trial's own work here is one epoch on 80 rows; 'fixed cost per trial' is what the service adds "
             "around it (trial actor start, Tune bookkeeping and checkpoint registration, and for 2 workers the "
             "Ray Train controller and worker group with its process group). 'start-up + table' is Python, "
             "Ray start-up and experiment validation, paid once per command. For scale: a default-experiment trial "
             "trains 6-7 epochs of 1,200 rows (about 6 s).")
    save("trial_overhead", "Fixed cost per trial (tiny trials through python -m i2m2_ray.tune)", env, rows,
         notes=notes, out=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
