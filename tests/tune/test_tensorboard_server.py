"""A live `tensorboard` server over a finished smoke experiment: scalars and HParams, through its HTTP API.

What a user sees in the browser comes from these endpoints, so the test asks them (not the event files):
every Tune trial must be listed with its curves and with the lr / weight_decay Tune gave it.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tune.procs import (
    SMOKE_VARIANTS,
    VENV_BIN,
    child_env,
    free_port,
    http_answers,
    kill_group,
    start_group,
    wait_until,
)

pytestmark = pytest.mark.slow

SERVER_START_S = 60
METRIC_TAG = "ray/tune/val/accuracy_best"
STATUSES = ["STATUS_FAILURE", "STATUS_RUNNING", "STATUS_SUCCESS", "STATUS_UNKNOWN"]


@pytest.fixture(scope="module")
def experiment_dir(smoke_two_seeds) -> Path:
    """The session's finished smoke experiment (tests/tune/conftest.py): real Tune trials and their files."""
    return smoke_two_seeds[0]


def trial_params(exp_dir: Path) -> dict[str, dict[str, Any]]:
    """Run name as TensorBoard shows it (trial dir relative to the logdir) -> the config Tune saved."""
    return {str(p.parent.relative_to(exp_dir)): json.loads(p.read_text())
            for p in sorted(exp_dir.glob("*/*/params.json"))}


def searched(params: dict[str, Any]) -> dict[str, float]:
    """lr / weight_decay of a trial: top level for searches, inside "run" for the final seed runs."""
    config = {**params, **params.get("run", {})}
    return {"lr": config["optim.lr"], "weight_decay": config["optim.weight_decay"]}


@pytest.fixture(scope="module")
def tensorboard(experiment_dir: Path, tmp_path_factory) -> Iterator[str]:
    """`tensorboard --logdir` on loopback; yields its base URL once it has loaded every trial's run."""
    port = free_port()
    log = tmp_path_factory.mktemp("tensorboard") / "tensorboard.log"
    proc = start_group([str(VENV_BIN / "tensorboard"), "--logdir", str(experiment_dir), "--host", "127.0.0.1",
                        "--port", str(port), "--reload_interval", "1"], log, child_env())
    url = f"http://127.0.0.1:{port}"
    runs = set(trial_params(experiment_dir))
    try:
        wait_until(lambda: http_answers(f"{url}/data/plugins_listing"), SERVER_START_S, "tensorboard", proc, log)
        wait_until(lambda: runs <= set(get(url, "/data/runs")), SERVER_START_S, "tensorboard loading runs", proc, log)
        yield url
    finally:
        kill_group(proc, grace_s=5)


def get(url: str, path: str, **query: str) -> Any:
    full = f"{url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(full, timeout=30) as r:
        return json.loads(r.read())


def post(url: str, path: str, body: dict[str, Any]) -> Any:
    """POST a JSON body the way TensorBoard's frontend does (the HParams plugin reads only JSON bodies)."""
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def session_groups(url: str, hparams: list[str]) -> dict[str, dict[str, Any]]:
    """Session group name (= run) -> its hparams, as the HParams table requests them."""
    body = {"experimentName": "", "allowedStatuses": STATUSES, "startIndex": 0, "sliceSize": 1000,
            "includeMetrics": False, "colParams": [{"hparam": h, "includeInResult": True} for h in hparams]}
    reply = post(url, "/data/plugin/hparams/session_groups", body)
    assert reply["totalSize"] == len(reply["sessionGroups"])
    return {g["name"]: g for g in reply["sessionGroups"]}


def test_every_trial_has_scalars(experiment_dir: Path, tensorboard: str) -> None:
    """Tune's per-trial scalars and the loop's per-epoch curves are served for every trial."""
    params = trial_params(experiment_dir)
    assert len(params) == 4 * len(SMOKE_VARIANTS)  # 2 search trials + 2 final seeds per variant
    tags = get(tensorboard, "/data/plugin/scalars/tags")
    for run in params:
        assert METRIC_TAG in tags.get(run, {}), f"{run}: {sorted(tags.get(run, {}))[:10]}"
        assert "val/accuracy" in tags.get(f"{run}/tensorboard", {}), f"{run}/tensorboard missing"
        points = get(tensorboard, "/data/plugin/scalars/scalars", run=run, tag=METRIC_TAG)
        last = json.loads((experiment_dir / run / "result.json").read_text().splitlines()[-1])
        assert points and math.isclose(points[-1][2], last["val/accuracy_best"], rel_tol=1e-6), (run, points)


def test_hparams_show_every_trial_with_its_lr_and_wd(experiment_dir: Path, tensorboard: str) -> None:
    """Every trial, search and final alike, is a session group whose lr / weight_decay equal Tune's
    params.json (final runs carry their setting in config["run"]), with the variant and seed beside them."""
    experiment = post(tensorboard, "/data/plugin/hparams/experiment",
                      {"experimentName": "", "hparamsLimit": 1000, "includeMetrics": True})
    assert {"lr", "weight_decay", "variant", "seed"} <= {h["name"] for h in experiment["hparamInfos"]}, experiment
    groups = session_groups(tensorboard, ["lr", "weight_decay", "variant", "seed"])
    params = trial_params(experiment_dir)
    assert set(params) <= set(groups), sorted(set(params) - set(groups))
    for run, config in params.items():
        shown = groups[run]["hparams"]
        assert set(shown) == {"lr", "weight_decay", "variant", "seed"}, (run, shown)
        for name, value in searched(config).items():
            assert math.isclose(shown[name], value, rel_tol=1e-12), (run, name, shown, value)
        merged = {**config, **config.get("run", {})}
        assert shown["variant"] == merged["base"]["variant"], (run, shown)
        assert [s["status"] for s in groups[run]["sessions"]] == ["STATUS_SUCCESS"]
