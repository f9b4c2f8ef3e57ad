"""Stage concurrency on a multi-node cluster (issue 11): a stage's variants side by side vs one after another.

A ``ray.cluster_utils.Cluster`` on this machine: a head without CPUs and two nodes of 4 logical CPUs
(8 trial slots at 1 CPU per trial). This process joins it (``RAY_ADDRESS``) and runs the default
experiment's searches twice, in separate directories, with the same variants, budget and seeds:
``side by side`` (the service: each stage's variants in one Tune run, ``stages.search_stage``) and
``one after another`` (the previous service: one Tune run per variant, ``phases.search_variant``).
Stage 2 of both starts from the side-by-side run's best stage-1 models, so both search the same thing.
Reported per stage: wall time of each way and their ratio, and the peak number of trials running
at once (from each Tune run's ``timeline.jsonl``) against ``min(stage trials, slots)``.
Usage: python -m bench.cluster_concurrency [--set key=value ...] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, environment, save
from bench.tune_default import LoadSampler

# Bounded for a 2-core machine: the default experiment's variants, trials per variant (3) and search
# space, on fewer rows and epochs.
BOUNDED = ["dataset.builtin.train_size=600", "dataset.builtin.val_size=150", "dataset.builtin.test_size=150",
           "budget.max_epochs=4", "budget.grace_period=2"]
NODES, CPUS_PER_NODE = 2, 4


def _timeline_spans(run_dirs: list[Path]) -> list[tuple[float, float]]:
    from i2m2_ray.tune.multisearch import TIMELINE, read_timeline

    spans = []
    for d in run_dirs:
        if not (d / TIMELINE).is_file():  # a stage with one variant runs it in its own search-<variant>
            continue
        for s in read_timeline(d / TIMELINE).values():
            if "start" in s and "end" in s:
                spans.append((s["start"], s["end"]))
    return spans


def run_stage(exp, stage: int, inits: dict[str, dict[str, str]], side_by_side: bool) -> dict[str, Any]:
    from i2m2_ray.tune.phases import search_variant
    from i2m2_ray.tune.stages import search_stage, stage_name
    from i2m2_ray.tune.state import ExperimentState, slug

    out = Path(exp.output_dir)
    state = ExperimentState(out)
    t0 = time.time()
    if side_by_side:
        best = search_stage(exp, stage, inits, state, resume=False)
        dirs = [out / stage_name(stage), *(out / f"search-{slug(v)}" for v in inits)]
    else:
        best = {v: search_variant(exp, v, init, state, resume=False) for v, init in inits.items()}
        dirs = [out / f"search-{slug(v)}" for v in inits]
    wall = time.time() - t0
    from i2m2_ray.tune.multisearch import peak_concurrency

    return {"best": best, "wall_s": wall, "peak": peak_concurrency(_timeline_spans(dirs)),
            "trials": sum(len(b["trials"]) for b in best.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", nargs="*", default=[], help="extra experiment overrides (key=value)")
    ap.add_argument("--smoke", action="store_true", help="2 variants per stage, 2 trials, 1 epoch")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from ray.cluster_utils import Cluster

    from i2m2_ray.data.dataset import resolve_dataset
    from i2m2_ray.data.format import load_manifest
    from i2m2_ray.models.builder import model_modalities, stage1_variants
    from i2m2_ray.tune import init_ray, load_experiment
    from i2m2_ray.tune.service import concurrency

    overrides = [*BOUNDED, *args.set]
    if args.smoke:
        overrides += ["variants=[unimodal:image,unimodal:audio,intra]", "budget.trials=2", "budget.max_epochs=1",
                      "budget.grace_period=1"]
    temp = tempfile.mkdtemp(prefix="rcb", dir="/tmp")  # short: Ray's socket paths live under it
    work = Path(tempfile.mkdtemp(prefix="i2m2-concurrency-"))
    os.environ["RAY_TMPDIR"] = temp  # the cluster's address file is ours, not other Ray users'
    os.makedirs(os.path.join(temp, "ray"), exist_ok=True)
    with socket.socket() as s:  # a free dashboard port: other Ray clusters on this machine hold 8265
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1", "dashboard_port": port})
    rows: list[dict[str, Any]] = []
    try:
        for _ in range(NODES):
            cluster.add_node(num_cpus=CPUS_PER_NODE)
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        init_ray()
        with LoadSampler() as load:
            ways = {"side by side": True, "one after another": False}
            exps = {w: load_experiment(None, [*overrides, f"output_dir={work / w.replace(' ', '-')}"]) for w in ways}
            slots = concurrency(exps["side by side"])
            modalities = model_modalities(load_manifest(resolve_dataset(exps["side by side"].dataset)),
                                          exps["side by side"].base_train_config().model)
            stage1 = exps["side by side"].stage1_variants()
            stage2 = exps["side by side"].stage2_variants()
            runs: dict[tuple[str, int], dict[str, Any]] = {}
            for w, side in ways.items():
                runs[(w, 1)] = run_stage(exps[w], 1, {v: {} for v in stage1}, side)
            best1 = runs[("side by side", 1)]["best"]
            inits = {v: {e: best1[src]["model_path"] for e, src in stage1_variants(v, modalities).items()}
                     for v in stage2}
            for w, side in ways.items():
                if stage2:
                    runs[(w, 2)] = run_stage(exps[w], 2, inits, side)
        for stage in (1, 2):
            if ("side by side", stage) not in runs:
                continue
            new, old = runs[("side by side", stage)], runs[("one after another", stage)]
            want = min(new["trials"], slots)
            rows.append({"stage": stage, "variants": len(new["best"]), "trials": new["trials"], "slots": slots,
                         "peak at once, side by side": new["peak"], "peak at once, one after another": old["peak"],
                         "peak / min(trials, slots)": round(new["peak"] / want, 2),
                         "target >= 0.9": "yes" if new["peak"] >= 0.9 * want else "no",
                         "wall s, side by side": round(new["wall_s"], 1),
                         "wall s, one after another": round(old["wall_s"], 1),
                         "wall ratio (side/after)": round(new["wall_s"] / old["wall_s"], 2)})
        env = environment(cluster=f"cluster_utils: head 0 CPU + {NODES} nodes x {CPUS_PER_NODE} logical CPUs",
                          overrides=" ".join(overrides), load_avg=load.summary())
    finally:
        import ray

        ray.shutdown()  # this process's connection, then the cluster it joined
        cluster.shutdown()  # only this cluster's processes
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    notes = """
Both ways run the same searches (variants, trials per variant, seeded samplers, ASHA settings) on the
same cluster, one way after the other, so their ratio is what the stage layout changes; absolute times
depend on the machine's load (load_avg above: 8 logical CPUs on 2 physical cores, shared). Peaks come
from each Tune run's timeline.jsonl (driver-side trial start and end); for one-after-another the peak
is bounded by the trials per variant.
"""
    out = args.out or (Path(tempfile.gettempdir()) / "i2m2-bench-smoke" if args.smoke else RESULTS)
    save("cluster_concurrency", "Stage concurrency: variants side by side vs one after another", env, rows,
         notes, out=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
