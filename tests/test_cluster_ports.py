"""A local cluster started by our entry points listens on loopback only: every listening TCP socket of
every Ray process it started (GCS, raylet, object manager, workers, dashboard and its agents).

The cluster is started through ``init_ray`` in a subprocess, so it is this test's own; its processes are
the subprocess and its descendants (read from /proc, never by name: other Ray clusters run here).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.tune.procs import REPO, child_env, kill_pids

LOOPBACK = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
START_S = 180  # generous: the 2 CPUs may be shared
DRIVER = """
import os, sys
from i2m2_ray.cluster import init_ray
init_ray(num_cpus=1, quiet=True)
import ray
from ray._private import ray_constants
worker_api = ray.get(ray.remote(lambda: os.environ.get("RAY_API_SERVER_ADDRESS")).remote())
print("node", ray.util.get_node_ip_address(), os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
      ray_constants.ENABLE_RAY_CLUSTER, os.environ.get("RAY_API_SERVER_ADDRESS"),
      worker_api == "http://" + ray.get_runtime_context().worker.node.address_info["webui_url"], flush=True)
sys.stdin.read()  # hold the cluster until the test closes stdin
"""


def descendants(root: int) -> set[int]:
    """root and every process below it (Ray's GCS, raylet, dashboard are children of the driver; workers
    and agents children of the raylet)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _started(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): a pid reused by another process differs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} write addresses as 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_ip)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw))
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def listening(pids: set[int]) -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(process name, address, port) of every listening TCP socket the processes hold."""
    owner: dict[str, str] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owner[target[8:-1]] = name
        except OSError:  # the process ended meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in owner:  # 0A: LISTEN
                hex_ip, hex_port = cols[1].split(":")
                found.append((owner[cols[9]], _address(hex_ip), int(hex_port, 16)))
    return found


def test_local_cluster_listens_on_loopback_only():
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, env=child_env(), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started: dict[int, str | None] = {}
    try:
        line = proc.stdout.readline()
        assert line.startswith("node "), line + proc.stdout.read() if proc.poll() is not None else line
        # The node is loopback; the single-node switch was on only while the cluster started; the
        # cluster's workers know their dashboard (Ray's state API), this process's environment is as it was.
        assert line.split()[1:] == ["127.0.0.1", "None", "True", "None", "True"], line
        deadline, sockets = time.monotonic() + START_S, []
        while time.monotonic() < deadline:  # the agents come up after init returns
            pids = descendants(proc.pid)
            started |= {pid: _started(pid) for pid in pids if pid not in started}
            sockets = listening(pids)
            names = {name for name, _, _ in sockets}
            if {"gcs_server", "raylet", "ray::DashboardA", "ray::RuntimeEnv"} <= names:
                break
            time.sleep(1)
        names = {name for name, _, _ in sockets}
        assert {"gcs_server", "raylet", "ray::DashboardA", "ray::RuntimeEnv"} <= names, sockets
        assert len(sockets) >= 8, sockets  # GCS, raylet + object manager, driver, dashboard, agents
        exposed = [s for s in sockets if s[1] not in LOOPBACK]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        started |= {pid: _started(pid) for pid in descendants(proc.pid) if pid not in started}
        proc.stdin.close()  # the driver exits and shuts its cluster down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(2)
        # Anything of ours that outlived the driver's shutdown, by pid and start time (pids get reused).
        kill_pids([pid for pid, t in started.items() if pid != proc.pid and t is not None and _started(pid) == t])
