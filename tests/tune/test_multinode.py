"""The service on a multi-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine): trials spread over
nodes and record where they ran, a 2-worker DDP trial spans two nodes, with its experiment on object storage only,
and a node lost mid-phase costs no finished trial while the interrupted one resumes on another node from
its checkpoint.

One cluster for the module: a head with no CPUs (the drivers connect there; nothing is scheduled on it)
and two worker nodes of 2 logical CPUs. The experiment drivers are real ``python -m i2m2_ray.tune``
processes joining it through ``RAY_ADDRESS``. Every node shares this machine's disk, so a local experiment
directory is storage every node sees; the 2-worker test uses a real S3 API (moto on loopback) instead.
The node-loss test removes a node: it runs last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from i2m2_ray.report import main as report_main
from i2m2_ray.report import trials_table
from i2m2_ray.tune.state import ExperimentState
from tests.s3_server import moto_s3
from tests.tune.procs import SMOKE_OVERRIDES, child_env, cluster_node_ip, free_port, kill_group, start_group, tail

pytestmark = pytest.mark.slow
# One stage-1 variant of the smoke experiment (its 200-row built-in dataset), every epoch kept by ASHA
# (grace period = max epochs), so a trial's epoch count says what it trained.
SMALL = [*SMOKE_OVERRIDES, "variants=[unimodal:image]", "final.seeds=[0]"]
SEARCH = "search-unimodal-image"
# A hang guard, not a timing check: an experiment here takes ~1 min, up to 8 min on a saturated 2-core box.
HANG_S = 900


@contextmanager
def own_address_file(temp: str):
    """Cluster writes its address to <system temp>/ray/ray_current_cluster and deletes it on shutdown; with
    RAY_TMPDIR pointed at our own directory that file is ours, not the one other Ray users on this machine see."""
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
def s3():
    """Started before the cluster, so its nodes' processes (Train workers too) inherit the credentials."""
    with moto_s3() as server:
        server.create_bucket("multinode")
        yield server


@pytest.fixture(scope="module")
def cluster(s3):
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")  # short: Ray's socket paths live under it
    with own_address_file(temp):
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": temp, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(), "node_ip_address": cluster_node_ip()})
    try:
        workers = [c.add_node(num_cpus=2, node_ip_address=cluster_node_ip()) for _ in range(2)]
        c.wait_for_nodes()
        yield c, workers
    finally:
        with own_address_file(temp):
            c.shutdown()  # only this cluster's processes
        shutil.rmtree(temp, ignore_errors=True)


def start_driver(c, out: Path | str, *overrides: str, log: Path | None = None) -> tuple[subprocess.Popen, Path]:
    log = log or Path(out).parent / f"{Path(out).name}.log"
    cmd = [sys.executable, "-m", "i2m2_ray.tune", *SMALL, f"output_dir={out}", *overrides]
    return start_group(cmd, log, child_env(RAY_ADDRESS=c.address)), log


def run_driver(c, out: Path | str, *overrides: str, timeout_s: float = HANG_S, log: Path | None = None) -> str:
    proc, log = start_driver(c, out, *overrides, log=log)
    try:
        rc = proc.wait(timeout=timeout_s)
    finally:
        kill_group(proc)
    assert rc == 0, tail(log)
    return log.read_text()


def results(trial_dir: Path) -> list[dict]:
    """Every result Tune recorded for one trial (``result.json`` is appended across restarts)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:  # the line Tune is writing right now
            break
    return found


def test_search_trials_spread_over_nodes_and_record_them(cluster, tmp_path, capsys):
    c, workers = cluster
    nodes = {n.node_id for n in workers}
    out = tmp_path / "spread"
    run_driver(c, out, "budget.trials=2", "budget.max_epochs=2", "budget.grace_period=2", "resources.cpus_per_trial=2")
    trials = ExperimentState(out).phase(SEARCH)["trials"]
    assert len(trials) == 2 and all(t["status"] == "ok" and t["epochs"] == 2 for t in trials)
    # two 2-CPU trials at once on two 2-CPU nodes: one on each, never on the CPU-less head
    assert {t["node_id"] for t in trials} == nodes
    for t in trials:
        assert t["nodes"] == [t["node_id"]]
        assert {r["node_id"] for r in results(out / t["trial_dir"])} == {t["node_id"]}  # no restart moved it
    final = ExperimentState(out).phase("final")["runs"]
    assert len(final) == 1 and final[0]["node_id"] in nodes

    table = trials_table(str(out))
    assert table.height == 3 and table["phase"].to_list() == [SEARCH] * 2 + ["final"]
    by_trial = {Path(t["trial_dir"]).name: t["node_id"][:8] for t in trials + final}
    assert dict(zip(table["trial"], table["node"], strict=True)) == by_trial
    assert table["val_accuracy"].to_list() == [t["val_best"] for t in trials + final]
    assert report_main([str(out), "--trials"]) == 0
    printed = {line.split("|")[3].strip(): line for line in capsys.readouterr().out.splitlines()
               if line.startswith("| ") and "trial_" in line}
    assert {name: line.split("|")[-2].strip() for name, line in printed.items()} == by_trial


def test_two_worker_trial_trains_with_ddp_across_two_nodes_on_object_storage(cluster, s3, tmp_path):
    """The experiment lives on S3 only. The Train run of a 2-worker trial keeps its checkpoints in the trial's
    S3 directory and its rank 0 publishes the loop's files there (on a cluster without a shared disk the
    trial's own node may hold none of them); the driver builds the table from S3."""
    c, workers = cluster
    nodes = {n.node_id for n in workers}
    uri = s3.uri("multinode", "ddp")
    log = run_driver(c, uri, "budget.trials=1", "budget.max_epochs=2", "budget.grace_period=2",
                     "resources.workers=2", "resources.cpus_per_trial=1", "train.placement_strategy=SPREAD",
                     log=tmp_path / "ddp.log")
    state = ExperimentState(uri)
    keys = set(s3.keys("multinode", "ddp/"))
    runs = state.phase(SEARCH)["trials"] + state.phase("final")["runs"]
    assert len(runs) == 2
    for run in runs:
        assert run["status"] == "ok" and run["epochs"] == 2, run
        # rank 0 gathered every rank's node over the gloo process group: one rank on each node
        assert len(run["nodes"]) == 2 and set(run["nodes"]) == nodes, run
        assert run["node_id"] == run["nodes"][0]
        trial = f"ddp/{run['trial_dir']}"
        saved = s3.get("multinode", f"{trial}/config.yaml").decode()
        assert "workers: 2" in saved and "strategy: ddp" in saved and "placement_strategy: SPREAD" in saved
        assert f"{trial}/model.pt" in keys
        # the Train run's last checkpoint, with the best weights so far, in S3 (a restart anywhere finds it)
        assert {f"{trial}/checkpoints/epoch_002/state.pt", f"{trial}/checkpoints/epoch_002/best_model.pt"} <= keys
    final = state.phase("final")["runs"][0]
    assert final["final"]["epochs_run"] == 2
    assert json.loads(s3.get("multinode", f"ddp/{final['trial_dir']}/final.json")) == final["final"]
    assert not Path(uri.split("?")[0].replace("s3://", "")).exists()  # nothing written to a local "s3:" path
    short = sorted(n[:8] for n in nodes)
    assert f"node {','.join(short)}" in log  # the trial line names both nodes


def test_node_lost_mid_phase_resumes_the_trial_elsewhere_from_its_checkpoint(cluster, tmp_path):
    """Two trials one after the other; when the second has checkpointed, its node is removed. The finished
    first trial is kept as it was; the second restarts on the surviving node at the epoch after its last
    checkpoint (no epoch trained twice) and the experiment ends with its full table."""
    c, workers = cluster
    epochs = 16
    out = tmp_path / "lost"
    proc, log = start_driver(c, out, "budget.trials=2", "budget.concurrency=1", f"budget.max_epochs={epochs}",
                             f"budget.grace_period={epochs}", "train.patience=null",
                             "dataset.builtin.train_size=1200")
    search = out / SEARCH
    try:
        deadline = time.monotonic() + HANG_S
        removed = first = second = None
        while removed is None:
            assert time.monotonic() < deadline and proc.poll() is None, tail(log)
            runs = {d: results(d) for d in sorted(search.glob("trial_*"))}
            done = [d for d, rs in runs.items() if rs and rs[-1]["epoch"] == epochs]
            going = [d for d, rs in runs.items() if rs and rs[-1]["epoch"] <= epochs - 6]
            if done and going:
                first, second = done[0], going[0]
                node_id = runs[second][-1]["node_id"]
                removed = next(n for n in workers if n.node_id == node_id)
                c.remove_node(removed, allow_graceful=False)  # SIGKILL, as a machine lost
            time.sleep(0.05)
        before = results(first)
        rc = proc.wait(timeout=HANG_S)
    finally:
        kill_group(proc)
    assert rc == 0, tail(log)
    survivor = next(n.node_id for n in workers if n is not removed)

    # the finished trial: not re-run (the same results, each epoch once), wherever it ran
    assert results(first) == before and [r["epoch"] for r in before] == list(range(1, epochs + 1))
    # the interrupted trial: epochs 1..k on the lost node, then the survivor from the epoch after its last
    # checkpoint to E, each reported once: no epoch trained twice
    rs = results(second)
    lost = [r for r in rs if r["node_id"] == removed.node_id]
    moved = [r for r in rs if r["node_id"] == survivor]
    assert lost and moved and lost + moved == rs, [(r["epoch"], r["node_id"][:8]) for r in rs]
    k, start = lost[-1]["epoch"], moved[0]["epoch"]
    assert [r["epoch"] for r in lost] == list(range(1, k + 1))
    assert [r["epoch"] for r in moved] == list(range(start, epochs + 1))
    # Usually start = k + 1. Tune can register epoch k + 1's checkpoint and lose that epoch's result line
    # with the node (the trial died between the two): then training resumes after k + 1, which was
    # trained once, on the lost node.
    assert start in (k + 1, k + 2), (k, start)
    # the first result of a new trial process, restored from the lost node's last checkpoint
    assert moved[0]["iterations_since_restore"] == 1 and moved[0]["pid"] != lost[-1]["pid"]
    assert lost[-1]["checkpoint_dir_name"] is not None

    state = ExperimentState(out)
    trials = {Path(t["trial_dir"]).name: t for t in state.phase(SEARCH)["trials"]}
    assert set(trials) == {first.name, second.name}
    assert all(t["status"] == "ok" and t["epochs"] == epochs for t in trials.values())
    assert trials[second.name]["node_id"] == survivor  # the ledger names where it finished
    final = state.phase("final")["runs"]
    assert [r["node_id"] for r in final] == [survivor] and final[0]["final"]["epochs_run"] == epochs
    table = pl.read_csv(out / "results.csv")
    assert table["status"].to_list() == ["done"] and table["trials"].to_list() == [2]
    assert table["epochs"].to_list() == [3 * epochs]
