"""Joining or starting the Ray cluster, the one way every entry point does it."""

from __future__ import annotations

import logging
import os


def init_ray(num_cpus: int | None = None, log_to_driver: bool = True, quiet: bool = False) -> None:
    """Join ``RAY_ADDRESS`` (a cluster, or the head of a ``ray job``) or start a private local cluster.

    Never a bare ``ray.init()``: it silently joins any ``ray start`` cluster on the machine. The
    dashboard stays on, bound to loopback: without it Train's placement-group cleanup hangs.
    ``quiet`` drops Ray's start-up lines, so a CLI error stays the one line on stderr. Otherwise one
    line on stdout says which cluster the run uses (the CLIs silence Ray's own start-up logging).
    """
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # ~4 s less idle wait per Train run
    # Worker processes start slowly on a busy small machine; Train's default start timeout is 60 s.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict = {"address": address, "log_to_driver": log_to_driver}
    if quiet:
        kwargs["logging_level"] = logging.ERROR
    if address == "local":
        kwargs.update(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1")
    context = ray.init(**kwargs)
    if quiet:
        return
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if address == "local":
        print(f"Started a local Ray cluster: {cpus:g} CPUs, dashboard http://{context.dashboard_url}", flush=True)
    else:
        print(f"Connected to existing Ray cluster at address: {ray.get_runtime_context().gcs_address} "
              f"({cpus:g} CPUs)", flush=True)
