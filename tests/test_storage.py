"""The storage module on a local directory and on a real S3 API (moto's server on loopback)."""

from __future__ import annotations

import json

import pytest
import torch

from i2m2_ray.errors import CheckpointError, ConfigError
from i2m2_ray.storage import Storage, is_uri, local_copies, lock_dir, open_storage, read_location
from i2m2_ray.tune.state import ExperimentState
from tests.s3_server import moto_s3


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as server:
        server.create_bucket("unit")
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Storage:
    if request.param == "local":
        return open_storage(tmp_path / "exp")
    server = request.getfixturevalue("s3")
    return open_storage(server.uri("unit", f"exp-{tmp_path.name}"))


def test_round_trip_list_exists_and_download(store, tmp_path):
    store.check()
    assert not store.exists("state.json")
    store.write_json("state.json", {"phases": {"a": 1}})
    store.write_text("final/trial_1/config.yaml", "seed: 3\n")
    store.write_bytes("final/trial_1/model.pt", b"\x00\x01weights")
    assert store.read_json("state.json") == {"phases": {"a": 1}}
    assert store.read_yaml("final/trial_1/config.yaml") == {"seed": 3}
    assert store.is_file("final/trial_1/model.pt") and not store.is_file("final/trial_1")
    assert store.list("final", recursive=True) == ["trial_1/config.yaml", "trial_1/model.pt"]
    assert store.list("missing") == []
    dest = store.download("final/trial_1/model.pt", tmp_path / "scratch" / "m.pt")
    assert dest.read_bytes() == b"\x00\x01weights"
    assert read_location(store.location("final/trial_1/model.pt")) == b"\x00\x01weights"
    with pytest.raises(ConfigError, match="not found"):
        store.read_bytes("nope.json")


def test_a_directory_of_files_uploads_where_its_destination_does_not_exist_yet(store, tmp_path):
    """A trial's ``tensorboard/`` holds only files; Arrow does not create the copied tree's root."""
    src = tmp_path / "scratch" / "tensorboard"
    src.mkdir(parents=True)
    (src / "events.out.tfevents.1").write_bytes(b"event")
    (src / "events.out.tfevents.2").write_bytes(b"more")
    store.upload_dir(src, "final/trial_1/tensorboard")
    assert store.list("final/trial_1/tensorboard", recursive=True) == ["events.out.tfevents.1", "events.out.tfevents.2"]
    assert store.read_bytes("final/trial_1/tensorboard/events.out.tfevents.1") == b"event"


def test_local_paths_stay_local_and_writes_leave_no_temporaries(tmp_path):
    store = open_storage(tmp_path / "exp")
    assert not store.remote and store.root == str((tmp_path / "exp").resolve())
    assert store.tune_args() == {"storage_path": store.root, "storage_filesystem": None}
    store.write_text("results.md", "table\n")
    assert [p.name for p in (tmp_path / "exp").iterdir()] == ["results.md"]
    assert store.location("final/t/model.pt") == f"{store.root}/final/t/model.pt"
    assert lock_dir(store) == tmp_path / "exp"


def test_s3_locations_keep_the_uri_options_and_the_lock_is_local(s3):
    store = open_storage(s3.uri("unit", "deep/exp"))
    assert store.remote and store.root == "unit/deep/exp"
    assert store.tune_args()["storage_path"] == "unit/deep/exp"
    where = store.location("final/t/model.pt")
    assert where == f"s3://unit/deep/exp/final/t/model.pt?endpoint_override={s3.endpoint}&scheme=http"
    store.write_bytes("final/t/model.pt", b"w")
    assert s3.get("unit", "deep/exp/final/t/model.pt") == b"w"  # boto3 sees what pyarrow wrote
    assert is_uri(where) and not is_uri("/tmp/x") and not is_uri("file:///tmp/x")
    assert lock_dir(store) != lock_dir(open_storage(s3.uri("unit", "other"))) and lock_dir(store).is_absolute()


def test_init_weights_are_fetched_to_scratch(s3, tmp_path):
    store = open_storage(s3.uri("unit", "init"))
    weights = {"w": torch.arange(4.0)}
    import io

    buf = io.BytesIO()
    torch.save(weights, buf)
    store.write_bytes("search-a/t/model.pt", buf.getvalue())
    local = tmp_path / "local.pt"
    torch.save(weights, local)
    with local_copies({"image": store.location("search-a/t/model.pt"), "audio": str(local)}) as files:
        assert files["audio"] == local
        assert torch.equal(torch.load(files["image"], weights_only=True)["w"], weights["w"])
        fetched = files["image"]
    assert not fetched.exists()  # scratch is cleaned up
    with pytest.raises(CheckpointError, match="state dict not found"):
        with local_copies({"image": store.location("search-a/none/model.pt")}):
            pass


def test_bad_uris_and_missing_buckets_fail_in_one_line(s3):
    with pytest.raises(ConfigError, match="unusable storage URI") as exc:
        open_storage("s3://unit/x?bogus=1")
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="unusable storage URI"):
        open_storage("nosuchfs://bucket/x")
    with pytest.raises(ConfigError, match="no bucket"):
        open_storage("s3:///x")
    with pytest.raises(ConfigError, match="bucket 'absent' does not exist"):
        open_storage(s3.uri("absent", "x")).check()


def test_unreachable_endpoint_fails_in_one_line():
    from tests.s3_server import _free_port

    store = open_storage(f"s3://unit/x?endpoint_override=127.0.0.1:{_free_port()}&scheme=http")
    with pytest.raises(ConfigError, match="storage unreachable") as exc:
        store.check()
    assert "\n" not in str(exc.value)


def test_old_ledgers_with_absolute_paths_are_read_as_relative(tmp_path):
    """An experiment an earlier version wrote elsewhere, then moved: its ledger still resolves."""
    old = "/old/place/exp"
    ledger = {"phases": {
        "search-unimodal-image": {"best": {"trial_dir": f"{old}/search-unimodal-image/trial_a"},
                                  "trials": [{"trial_dir": f"{old}/search-unimodal-image/trial_a"}],
                                  "init": {}, "model_path": f"{old}/search-unimodal-image/trial_a/model.pt"},
        "search-i2m2-lf": {"best": {"trial_dir": f"{old}/search-i2m2-lf/trial_b"}, "trials": [],
                           "init": {"image": f"{old}/search-unimodal-image/trial_a/model.pt",
                                    "user": "/elsewhere/weights.pt"},
                           "model_path": f"{old}/search-i2m2-lf/trial_b/model.pt"},
        "final": {"runs": [{"trial_dir": f"{old}/final/trial_c"}], "wall_s": 1.0}}}
    (tmp_path / "state.json").write_text(json.dumps(ledger))
    phases = ExperimentState(tmp_path).data["phases"]
    assert phases["search-unimodal-image"]["model_path"] == "search-unimodal-image/trial_a/model.pt"
    assert phases["search-unimodal-image"]["trials"][0]["trial_dir"] == "search-unimodal-image/trial_a"
    assert phases["search-i2m2-lf"]["init"] == {"image": "search-unimodal-image/trial_a/model.pt",
                                               "user": "/elsewhere/weights.pt"}
    assert phases["final"]["runs"][0]["trial_dir"] == "final/trial_c"
    store = open_storage(tmp_path)
    assert store.path("final/trial_c") == f"{tmp_path.resolve()}/final/trial_c"
    assert store.path("/elsewhere/weights.pt") == "/elsewhere/weights.pt"


def test_corrupt_ledger_on_s3_names_its_uri(s3):
    store = open_storage(s3.uri("unit", "corrupt"))
    store.write_text("state.json", "{not json")
    with pytest.raises(ConfigError, match=r"s3://unit/corrupt/state.json\?.*corrupt JSON"):
        ExperimentState(store)


@pytest.mark.parametrize("cli", ["i2m2_ray.tune", "i2m2_ray.report"])
def test_cli_refuses_a_bad_storage_uri_in_one_line_before_ray_starts(cli, s3):
    import subprocess
    import sys

    uri = s3.uri("absent", "exp")
    argv = ["--smoke", f"output_dir={uri}"] if cli == "i2m2_ray.tune" else [uri]
    proc = subprocess.run([sys.executable, "-m", cli, *argv], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"error: {uri}: bucket 'absent' does not exist; create it first"
    assert "Ray" not in proc.stdout  # refused before a cluster was started or joined
