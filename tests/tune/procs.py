"""Real-process helpers for the service tests: free ports, process groups, HTTP polling, the smoke experiment.

Everything is stopped by pid or process group: never `ray stop` (it kills every Ray process of the
user on a shared machine), never a kill by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# The smallest experiment that still runs every phase (stage 1, stage 2 from stage-1 weights, final):
# the shipped one that `python -m i2m2_ray.tune --smoke` runs.
SMOKE_EXPERIMENT = REPO / "search_spaces" / "smoke.yaml"
SMOKE_VARIANTS: list[str] = yaml.safe_load(SMOKE_EXPERIMENT.read_text())["variants"]
# The leading arguments of `python -m i2m2_ray.tune` (or jobs/submit.sh) that run it; overrides may follow.
SMOKE_OVERRIDES = [str(SMOKE_EXPERIMENT)]


def free_port() -> int:
    """A port the kernel just handed out on loopback (bind to 0), so parallel test runs don't collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int, avoid: range = range(0)) -> list[int]:
    """n distinct free ports outside `avoid` (Ray's worker port range must not hold its fixed ports)."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports and p not in avoid:
            ports.append(p)
    return ports


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the venv first on PATH (`python`, `ray`, `tensorboard`) and no RAY_ADDRESS.

    RAY_ADDRESS may point at someone else's cluster; a child that inherited it would join it.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def start_group(cmd: list[str], log: Path, env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
    """Start cmd in its own session (process group) with stdout+stderr to log, so it can be killed whole."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def kill_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it if still alive after grace_s; the group id is proc.pid."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    group_alive = True
    deadline = time.monotonic() + 10
    while group_alive and time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            group_alive = False
    if group_alive:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pids_mentioning(text: str) -> list[int]:
    """Live processes of this user whose command line contains text (e.g. a Ray head's own temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None, every_s: float = 0.5) -> None:
    """Poll check() until it is true; fail with the log's tail on timeout or if proc exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n{tail(log)}")
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{tail(log)}")


def http_answers(url: str, timeout_s: float = 5.0) -> bool:
    """Whether an HTTP server answers at url at all (a 401 from a token-auth Ray dashboard counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def tail(log: Path | None, chars: int = 6000) -> str:
    if log is None or not log.is_file():
        return ""
    return log.read_text(errors="replace")[-chars:]


def cluster_node_ip() -> str:
    """The machine's address, for ``ray.cluster_utils.Cluster`` nodes started in the test process.

    Once this process is connected to the session's loopback cluster (``ray_local``), Ray would give a
    new in-process node that cluster's node IP (127.0.0.1) while advertising the GCS at the machine's
    address: drivers joining ``cluster.address`` then never reach it. An explicit IP keeps both the same.
    """
    from ray._private.services import node_ip_address_from_perspective

    return node_ip_address_from_perspective()
