"""Fixed cost per trial of the search service (issue 6, cost tables).

Runs ``python -m i2m2_ray.tune smoke`` cut to one variant (N trials of one epoch on 80 rows, so
training takes milliseconds) and reads each phase's wall time and each trial's own time
(Tune's ``time_total_s``: model build, data load, the epoch, checkpoint) from state.json.
Fixed cost per trial = phase wall x concurrent trials / N - mean in-trial time: what Ray Tune, the
trial actor and, for several workers, the Ray Train worker group add around a trial's own work.
Two layouts: 1 worker per trial in-process (the default, 2 trials at once on 2 CPUs) and 2 Ray Train
workers per trial (one trial at a time). ``--marginal K``: the in-process layout again with K trials, so
(wall(N) - wall(K)) / (N - K) splits the per-trial cost from what each phase pays once (Tune start,
trial actors importing torch, shutdown).

Memory (``--memory-data DIR``, an AV-MNIST rebuild, e.g. 11k/1k/2k): the peak proportional set size
(PSS: shared pages counted once, split among the processes that map them) summed over the Ray worker
processes and the raylet while 1, then 4, unimodal:image trials run at once on a 4-CPU local cluster
(every trial holds all model modalities), and the peak RSS of one ``python -m i2m2_ray.train`` of
i2m2:lf (stopped after ``--train-limit`` s: the peak is the data load). ``--before DIR`` repeats the
memory rows with another checkout's code on PYTHONPATH (the "before" numbers).
Usage: python -m bench.trial_overhead [--trials 6] [--smoke] [--marginal 2] [--memory-data DIR] [--before DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS, environment, save_sections
from bench.tune_default import LoadSampler, run_service

# The shipped smoke experiment (1 epoch, 1 final seed) cut to one variant and 80 training rows.
TINY = ["variants=[unimodal:image]", "dataset.builtin.train_size=80", "dataset.builtin.val_size=40",
        "dataset.builtin.test_size=40"]
STARTUP = "node timed out during startup"
LAYOUTS = {"1 worker, in-process (2 trials at once)": (["resources.workers=1", "resources.cpus_per_trial=1"], 2),
           "2 Ray Train workers x 0.5 CPU (1 trial at a time)":
               (["resources.workers=2", "resources.cpus_per_trial=0.5"], 1)}


def measure(label: str, overrides: list[str], concurrency: int, trials: int, tmp: Path) -> dict[str, Any]:
    out_dir = tmp / label.split()[0]
    for attempt in range(5):  # a machine this loaded sometimes misses Ray's fixed 30 s node start-up wait
        rc, wall, output = run_service("smoke", out_dir / str(attempt), [*TINY, f"budget.trials={trials}", *overrides],
                                       num_cpus=2)
        if rc == 0 or STARTUP not in output and "internal error: Exception" not in output:
            break
    out_dir = out_dir / str(attempt)
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


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Ray's gcs, raylet and workers descend from the driver that started them)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except OSError:
        return 0


class NodePss:
    """Peak over time of the summed PSS of the Ray worker processes (trials, the data holder, idle
    workers) and the raylet (the object store's owner) under ``pid``."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            total = 0
            for child in _children(self.pid):
                try:
                    cmd = open(f"/proc/{child}/cmdline", "rb").read().split(b"\0")[0]
                except OSError:
                    continue
                if cmd.startswith(b"ray::") or cmd.endswith(b"raylet"):
                    total += _pss(child)
            self.peak = max(self.peak, total)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


def _env(code: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(code or REPO)
    return env


def node_memory(data: Path, trials: int, code: Path | None, tmp: Path) -> dict[str, Any]:
    """``trials`` unimodal:image trials of one epoch at once on the rebuild; peak summed PSS of the node."""
    out = tmp / f"mem-{trials}-{'before' if code else 'now'}"
    cmd = [sys.executable, "-m", "i2m2_ray.tune", "smoke", f"output_dir={out}", f"dataset.path={data}",
           "variants=[unimodal:image]", f"budget.trials={trials}", f"budget.concurrency={trials}",
           "budget.max_epochs=1", "--num-cpus", "4"]
    for _ in range(5):
        t0 = time.perf_counter()
        with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(code)) as proc:
            sampler = NodePss(proc.pid)
            output = proc.communicate()[0]
            peak = sampler.close()
        if proc.returncode == 0 or STARTUP not in output and "internal error: Exception" not in output:
            break
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory run ({trials} trials) failed (exit {proc.returncode}):\n{output[-2000:]}")
    phases = json.loads((out / "state.json").read_text())["phases"]
    print(f"memory: {trials} trial(s) at once: peak PSS {peak / 2**30:.2f} GiB", flush=True)
    return {"code": "before" if code else "this checkout", "trials at once": trials,
            "peak PSS GiB (Ray workers + raylet)": round(peak / 2**30, 2),
            "search phase s": round(phases["search-unimodal-image"]["wall_s"], 1),
            "end to end s": round(time.perf_counter() - t0, 1)}


def train_rss(data: Path, code: Path | None, limit: float, tmp: Path) -> dict[str, Any]:
    """Peak RSS (VmHWM) of ``python -m i2m2_ray.train`` of i2m2:lf on the rebuild, stopped after ``limit`` s."""
    cmd = [sys.executable, "-m", "i2m2_ray.train", "variant=i2m2:lf", f"dataset.path={data}", "epochs=1",
           "tensorboard=false", f"run_dir={tmp / ('train-before' if code else 'train-now')}"]
    t0, peak = time.perf_counter(), 0
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=_env(code)) as proc:
        while proc.poll() is None and time.perf_counter() - t0 < limit:
            try:
                hwm = [ln for ln in open(f"/proc/{proc.pid}/status") if ln.startswith("VmHWM:")]
                peak = max(peak, int(hwm[0].split()[1]) * 1024) if hwm else peak
            except OSError:
                pass
            time.sleep(0.5)
        finished = proc.poll() is not None
        proc.kill()
    print(f"memory: python -m i2m2_ray.train peak RSS {peak / 2**30:.2f} GiB", flush=True)
    return {"code": "before" if code else "this checkout", "peak RSS GiB": round(peak / 2**30, 2),
            "ran s": round(time.perf_counter() - t0, 1), "finished": finished}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--smoke", action="store_true", help="2 trials, first layout only")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--in-process-only", action="store_true", help="skip the 2-worker layout")
    ap.add_argument("--marginal", type=int, default=0, help="also run the in-process layout with this many trials")
    ap.add_argument("--memory-data", type=Path, default=None, help="an AV-MNIST rebuild for the memory rows")
    ap.add_argument("--before", type=Path, default=None, help="a checkout whose code gives the 'before' memory rows")
    ap.add_argument("--train-limit", type=float, default=240.0)
    ap.add_argument("--memory-only", action="store_true", help="only the memory rows")
    args = ap.parse_args()
    layouts = dict(list(LAYOUTS.items())[:1]) if args.smoke or args.in_process_only else LAYOUTS
    trials = 2 if args.smoke else args.trials
    out = args.out or (Path(tempfile.gettempdir()) / "i2m2-bench-smoke" if args.smoke else RESULTS)
    memory: list[dict[str, Any]] = []
    single: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="i2m2-overhead-") as tmp, LoadSampler() as load:
        for code in [None, args.before] if args.before else [None]:  # memory first: it does not depend on load
            if args.memory_data:
                single.append(train_rss(args.memory_data, code, args.train_limit, Path(tmp)))
                memory += [node_memory(args.memory_data, n, code, Path(tmp)) for n in (1, 4)]
                memory[-1]["x one trial"] = round(memory[-1]["peak PSS GiB (Ray workers + raylet)"]
                                                  / memory[-2]["peak PSS GiB (Ray workers + raylet)"], 2)
        rows = [] if args.memory_only else [measure(lab, o, c, trials, Path(tmp)) for lab, (o, c) in layouts.items()]
        if args.marginal and rows:
            label, (o, c) = next(iter(LAYOUTS.items()))
            few = measure(label, o, c, args.marginal, Path(tmp) / "marginal")
            rows.append(few)
            per_trial = (rows[0]["phase wall s"] - few["phase wall s"]) * c / (trials - args.marginal)
            label = f"marginal: (wall({trials}) - wall({args.marginal})) x {c} / {trials - args.marginal}"
            # The extra trials' own time: with reused trial processes, later trials skip the imports that the
            # first trial of each process pays inside its own time, so the mean over all trials would overstate it.
            inside = (rows[0]["in-trial time s (mean)"] * trials - few["in-trial time s (mean)"] * args.marginal) / (
                trials - args.marginal)
            rows.append({"layout": label,
                         "trials": trials - args.marginal, "wall per trial slot s": round(per_trial, 2),
                         "in-trial time s (mean)": round(inside, 2),
                         "fixed cost per trial s": round(per_trial - inside, 2)})
    env = environment(command="python -m bench.trial_overhead " + " ".join(sys.argv[1:]),
                      experiment="search_spaces/smoke.yaml + " + " ".join(TINY), loadavg_1min_during=load.summary())
    notes = ("A trial's own work here is one epoch on 80 rows; 'fixed cost per trial' is what the service adds "
             "around it (Tune bookkeeping and checkpoint registration, the trial process's start and imports for the "
             "first trial of each concurrent slot only, since later trials reuse it, and for 2 workers the "
             "Ray Train controller and worker group with its process group). The marginal row's in-trial time is "
             "that of the extra trials alone. 'start-up + table' is Python, "
             "Ray start-up and experiment validation, paid once per command. For scale: a default-experiment trial "
             "trains 6-7 epochs of 1,200 rows (about 6 s). Memory: PSS counts a page mapped by k processes as 1/k "
             "in each, so the node's one shared copy of the splits (data/shared.py, in the raylet's object store) "
             "is counted once; the same idle Ray workers are in both rows (4-CPU cluster each time).")
    sections = [("Fixed cost per trial", rows)] if rows else []
    if memory:
        sections += [("Peak memory of one node: 1 vs 4 AV-MNIST trials at once", memory),
                     ("One python -m i2m2_ray.train (i2m2:lf) on the rebuild", single)]
    save_sections("trial_overhead", "Fixed cost and memory per trial (python -m i2m2_ray.tune / .train)", env,
                  sections, notes=notes, out=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
