"""A stage's variants search side by side on a multi-node cluster, each with its own study and ASHA.

One ``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes of 2 logical CPUs (4 trial
slots). The driver is a real ``python -m i2m2_ray.tune`` joining it through ``RAY_ADDRESS``. Stage 1
has three variants of 2 trials each, so one Tune run of the stage holds trials of every variant at once
(a variant searched alone could run 2). The fast tests below need no Ray cluster: per-variant routing
of suggestions and the GPU-share arithmetic on a real local Ray node that declares one logical GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from i2m2_ray.tune.experiment import load_experiment
from i2m2_ray.tune.multisearch import DECISIONS, TIMELINE, MultiSearch, read_timeline
from i2m2_ray.tune.state import ExperimentState
from tests.tune.procs import REPO, SMOKE_OVERRIDES, child_env, cluster_node_ip, free_port, kill_group, start_group, tail

STAGE1 = ["unimodal:image", "unimodal:audio", "inter:lf"]
# 3 epochs, ASHA rungs at epochs 1 and 2 (grace 1, factor 2): every variant's trials are compared.
# The audio variant barely moves (a tiny learning rate): a single ASHA over all variants would hold it
# against the others' better values and stop its trials at the first rung.
ARGS = [*SMOKE_OVERRIDES, f"variants=[{','.join(STAGE1)}]", "budget.trials=2", "budget.max_epochs=3",
        "budget.grace_period=1", "budget.reduction_factor=2", "train.patience=10", "final.seeds=[0]",
        "search_overrides.unimodal:audio.optim.lr={loguniform: [1.0e-7, 2.0e-7]}"]


@contextmanager
def own_address_file(temp: str):
    """Cluster writes its address under <RAY_TMPDIR>/ray and deletes it on shutdown: keep that file ours,
    not the one other Ray users on this machine see."""
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    os.makedirs(os.path.join(temp, "ray"), exist_ok=True)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_TMPDIR")
        else:
            os.environ["RAY_TMPDIR"] = before


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rsc", dir="/tmp")  # short: Ray's socket paths live under it
    out = tmp_path_factory.mktemp("stage") / "exp"
    with own_address_file(temp):
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": temp, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(), "node_ip_address": cluster_node_ip()})
    try:
        for _ in range(2):
            c.add_node(num_cpus=2, node_ip_address=cluster_node_ip())
        c.wait_for_nodes()
        log = out.parent / "driver.log"
        proc = start_group([sys.executable, "-m", "i2m2_ray.tune", *ARGS, f"output_dir={out}"], log,
                           child_env(RAY_ADDRESS=c.address))
        try:
            rc = proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            kill_group(proc)
        assert rc == 0, tail(log)
        yield out, log.read_text()
    finally:
        with own_address_file(temp):
            c.shutdown()  # only this cluster's processes
        shutil.rmtree(temp, ignore_errors=True)


def _trial_variants(out: Path) -> dict[str, str]:
    """trial id -> variant, from the ledger the table reads."""
    state = ExperimentState(out)
    return {Path(t["trial_dir"]).name.removeprefix("trial_"): v
            for v in STAGE1 for t in state.phase(f"search-{v.replace(':', '-')}")["trials"]}


def _results(out: Path, trial: str) -> list[dict]:
    path = out / "search-stage1" / f"trial_{trial}" / "result.json"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_stage1_runs_every_variant_at_once(stage1_run):
    out, log = stage1_run
    owners = _trial_variants(out)
    assert len(owners) == 6 and sorted(owners.values()) == sorted(STAGE1 * 2)
    spans = read_timeline(out / "search-stage1" / TIMELINE)
    assert {t: s["variant"] for t, s in spans.items()} == owners
    for trial, span in spans.items():
        assert span["start"] < span["end"], trial
        # Tune's own per-result timestamps (whole seconds) fall inside the recorded span.
        rows = _results(out, trial)
        assert rows and all(span["start"] - 1 <= r["timestamp"] <= span["end"] + 1 for r in rows), trial
    # Some moment when a trial of every stage-1 variant was running.
    together = [t for t in sorted(s["start"] for s in spans.values())
                if {s["variant"] for s in spans.values() if s["start"] <= t < s["end"]} == set(STAGE1)]
    assert together, spans
    assert all(f"[{v}] trial" in log for v in STAGE1)  # progress lines name each trial's variant


@pytest.mark.slow
def test_asha_compares_trials_of_one_variant_only(stage1_run):
    out, _ = stage1_run
    owners = _trial_variants(out)
    decisions = [json.loads(x) for x in (out / "search-stage1" / DECISIONS).read_text().splitlines()]
    compared = [d for d in decisions if d["compared"]]
    assert {d["variant"] for d in compared} == set(STAGE1)  # every variant's trials met a rung with others
    value = {(t, r["epoch"]): r["val/accuracy_best"] for t in owners for r in _results(out, t)}
    for d in decisions:
        assert owners[d["trial"]] == d["variant"]
        assert {owners[t] for t in d["compared"]} <= {d["variant"]}, d
        if d["compared"]:  # the action is ASHA's rule over exactly those trials' values at that epoch
            cutoff = np.nanpercentile([value[(t, d["epoch"])] for t in d["compared"]], 50)
            assert d["action"] == ("STOP" if value[(d["trial"], d["epoch"])] < cutoff else "CONTINUE"), d
    # The first trial of a variant at each rung has nothing to be compared with: every variant, the
    # hopeless audio one included, trains one trial to the end.
    state = ExperimentState(out)
    for v in STAGE1:
        epochs = [t["epochs"] for t in state.phase(f"search-{v.replace(':', '-')}")["trials"]]
        assert max(epochs) == 3, (v, epochs)


def test_each_variant_gets_the_suggestions_it_would_get_alone():
    """Interleaved with other variants, a variant's seeded study suggests what it suggests alone."""
    from ray.tune.search.optuna import OptunaSearch

    from i2m2_ray.tune.service import make_sampler, make_searcher, trial_param_space

    exp = load_experiment(REPO / "search_spaces" / "smoke.yaml", ["budget.trials=6"])
    spaces = {v: trial_param_space(exp, v) for v in exp.variants}
    multi = MultiSearch(spaces, {v: make_searcher(exp, v) for v in spaces}, 6, "val/accuracy_best", "max")
    got: dict[str, list[dict]] = {v: [] for v in spaces}
    for i in range(6 * len(spaces)):
        config = multi.suggest(f"t{i}")
        got[config["base"]["variant"]].append({k: v for k, v in config.items() if k != "base"})
        multi.on_trial_complete(f"t{i}", {"val/accuracy_best": 0.1 * (i % 7)})
    assert multi.suggest("extra") == "FINISHED"
    assert [len(g) for g in got.values()] == [6] * len(spaces)
    startup = make_sampler(exp, "x")._n_startup_trials
    for variant, space in spaces.items():
        alone = OptunaSearch(sampler=make_sampler(exp, variant))
        alone.set_search_properties("val/accuracy_best", "max", space)
        want = [alone.suggest(f"a{i}") for i in range(startup)]
        assert got[variant][:startup] == want, variant
    assert got["unimodal:image"] != got["unimodal:audio"]  # each its own seed


def test_gpu_shares_pack_trials_per_gpu(tmp_path):
    """A real Ray node declaring one logical GPU: 0.25 GPU per trial -> 4 trials at once, 0.1 -> 10, 0.5 -> 2;
    the placement check accepts the shares. (No trial runs: it would try CUDA.)"""
    script = """
import sys
import ray
from i2m2_ray.tune.experiment import load_experiment
from i2m2_ray.tune.service import check_resources, concurrency
ray.init(address="local", num_cpus=16, num_gpus=1, include_dashboard=False, log_to_driver=False)
for share in ("0.25", "0.1", "0.5", "1"):
    exp = load_experiment(sys.argv[1], [f"resources.gpus_per_worker={share}", "resources.memory_per_trial=0.01",
                                        "resources.cpus_per_trial=1"])
    check_resources(exp)
    print(share, concurrency(exp))
"""
    proc = subprocess.run([sys.executable, "-c", script, str(REPO / "search_spaces" / "smoke.yaml")],
                          capture_output=True, text=True, timeout=240, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x.split() for x in proc.stdout.splitlines() if x.split() and x.split()[0][0].isdigit()]
    assert {a: int(b) for a, b in lines} == {"0.25": 4, "0.1": 10, "0.5": 2, "1": 1}


@pytest.mark.parametrize("share, ok", [(0.25, True), (0.5, True), (2, True), (1.5, False)])
def test_gpu_share_values(share, ok):
    from i2m2_ray.errors import ConfigError

    args = [f"resources.gpus_per_worker={share}"]
    if ok:
        assert load_experiment(REPO / "search_spaces" / "smoke.yaml", args).resources.gpus_per_worker == share
    else:
        with pytest.raises(ConfigError, match=r"^resources.gpus_per_worker: a share of one GPU .*got 1.5$"):
            load_experiment(REPO / "search_spaces" / "smoke.yaml", args)
