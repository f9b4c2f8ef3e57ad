"""Joining or starting the Ray cluster, the one way every entry point does it."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

# Ray's single-node switch (on by default on macOS/Windows): with it off, the node IP is loopback.
_SINGLE_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_API_SERVER = "RAY_API_SERVER_ADDRESS"  # where Ray's state API finds the cluster's dashboard


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int | None = None, **kwargs: Any) -> Any:
    """Start a private single-node cluster whose every port (GCS, raylet, object manager, agents,
    dashboard) listens on 127.0.0.1 only; returns ``ray.init``'s context.

    Ray binds its servers to all interfaces unless the node IP is exactly 127.0.0.1, and turns a
    ``_node_ip_address="127.0.0.1"`` into the machine's address (``resolve_ip_for_localhost``). Its
    single-node switch, read when ``ray`` is imported and by every process the cluster starts, makes
    the node IP loopback; it is on only while this cluster starts, so joining a cluster later (this
    process, or a ``ray start`` it runs) is unaffected. The dashboard stays on (without it Train's
    placement-group cleanup hangs) and every process of the cluster is told its address: Ray's state
    API, which that cleanup uses, otherwise fails when other Ray clusters run on the machine. This
    process's environment is left as it was.
    """
    import ray
    from ray._private import ray_constants

    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in (_SINGLE_NODE, _API_SERVER)}
    before_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update({_SINGLE_NODE: "0", _API_SERVER: api})  # the cluster's processes inherit both
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported ray already
    try:
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                           dashboard_host="127.0.0.1", dashboard_port=port, **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if context.dashboard_url != f"127.0.0.1:{port}":  # the port was taken meanwhile: not our dashboard
        ray.shutdown()
        raise RuntimeError(f"the local Ray dashboard did not get port {port} (got {context.dashboard_url})")
    return context


def init_ray(num_cpus: int | None = None, log_to_driver: bool = True, quiet: bool = False) -> None:
    """Join ``RAY_ADDRESS`` (a cluster, or the head of a ``ray job``) with that cluster's own settings,
    or start a private local cluster on loopback (``start_local_ray``).

    Never a bare ``ray.init()``: it silently joins any ``ray start`` cluster on the machine.
    ``quiet`` drops Ray's start-up lines, so a CLI error stays the one line on stderr. Otherwise one
    line on stdout says which cluster the run uses (the CLIs silence Ray's own start-up logging).
    SIGTERM (``ray job stop``) then stops the run like Ctrl-C (``cli.sigterm_as_interrupt``).
    """
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # ~4 s less idle wait per Train run
    # Worker processes start slowly on a busy small machine; Train's default start timeout is 60 s.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    import ray

    from i2m2_ray.cli import sigterm_as_interrupt

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict = {"log_to_driver": log_to_driver}
    if quiet:
        kwargs["logging_level"] = logging.ERROR
    if address == "local":
        context = start_local_ray(num_cpus, **kwargs)
    else:
        context = ray.init(address=address, **kwargs)
    sigterm_as_interrupt()  # after ray.init: Ray's core worker installs a native SIGTERM handler
    if quiet:
        return
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if address == "local":
        print(f"Started a local Ray cluster: {cpus:g} CPUs, dashboard http://{context.dashboard_url}", flush=True)
    else:
        print(f"Connected to existing Ray cluster at address: {ray.get_runtime_context().gcs_address} "
              f"({cpus:g} CPUs)", flush=True)
