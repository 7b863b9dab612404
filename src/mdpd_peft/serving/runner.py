"""Run a Ray Serve application until SIGINT or SIGTERM, then take down what was started: nothing left behind."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Callable

from .settings import ServerSettings

PROXY_READY_TIMEOUT_S = 60  # seconds a local instance's HTTP proxy may take to start (see run_until_signalled)


def run_until_signalled(
    app,
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    name: str = "side-tasks",
    route_prefix: str = "/",
    on_ready: Callable[[str], None] = print,
) -> None:
    """Deploy ``app`` over HTTP on ``host:port`` and block until SIGINT or SIGTERM.

    Without ``address`` a local Ray instance starts (with at least the CPUs the replicas reserve, so that every
    replica is placed even on a smaller machine) and goes down on exit, with Serve, its proxy and every worker.
    With ``address`` the process joins that cluster: on exit it deletes its own application and disconnects,
    leaving the cluster and its other applications running (Serve's HTTP options apply only if Serve is not
    running there yet). Ray's usage statistics stay off unless ``RAY_USAGE_STATS_ENABLED`` says otherwise, and a
    local instance gives its HTTP proxy ``PROXY_READY_TIMEOUT_S`` to start (Ray's 5 s, which a busy small machine
    can miss, after which Serve kills and restarts the proxy) unless ``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S`` is set.
    ``on_ready`` gets the URL once the application answers.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_READY_TIMEOUT_S))  # read by the local instance's processes
    import ray
    from ray import serve

    stop = threading.Event()
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(settings.replicas * settings.num_cpus)), include_dashboard=False)
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}  # after Ray's own
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=name, route_prefix=route_prefix)
        on_ready(f"http://{host}:{port}{route_prefix.rstrip('/')}")
        while not stop.wait(0.5):
            pass
    finally:
        try:
            if address:
                serve.delete(name)
            elif local_node_alive():
                serve.shutdown()
        finally:
            ray.shutdown()
            for number, handler in previous.items():
                signal.signal(number, handler)


def local_node_alive(settle_s: float = 1.0) -> bool:
    """Whether every process of the local Ray instance still runs. A signal sent to the whole process group (Ctrl+C
    in a terminal, systemd's stop) reaches Ray's processes too; once its GCS or raylet is gone, asking Serve to shut
    down would wait a minute for them, so only what is left is taken down. ``settle_s`` lets such a signal land."""
    import ray

    time.sleep(settle_s)
    node = ray._private.worker._global_node  # Ray keeps no public handle on the processes it started
    return node is None or node.remaining_processes_alive()
