"""The side-task server's batching and limits, with their defaults (each is a ``mdpd-peft serve`` option)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import invalid, is_integer, is_real


@dataclass(frozen=True)
class ServerSettings:
    """How one deployment of a bundle batches and what it accepts.

    Args:
        max_batch_size: Inputs per encoder pass. Inputs of concurrent requests wait together (``@serve.batch``)
            until this many are queued or ``batch_wait_timeout_s`` has passed, then run in one pass.
        batch_wait_timeout_s: The longest an input waits for others before its pass runs.
        max_inputs: The most inputs one request may hold; a longer request gets a 422 naming ``inputs``.
        max_ongoing_requests: Requests one replica takes at a time (Ray Serve's setting of that name); the others
            wait in the proxy's queue. Keep it at least the requests that fill a batch.
        max_queued_requests: Requests that may wait in that queue; beyond them a request gets a 503 at once
            (overload), so a burst never piles up without bound. ``-1``: no bound.
        replicas: Copies of the deployment, each with the whole bundle; Ray spreads requests over them and places
            them over the cluster's nodes.
        num_cpus: CPUs Ray reserves for each replica; PyTorch in the replica uses that many threads (at least 1).
    """

    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    max_inputs: int = 64
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256
    replicas: int = 1
    num_cpus: float = 1.0

    def __post_init__(self):
        for name in ("max_batch_size", "max_inputs", "max_ongoing_requests", "replicas"):
            if not (is_integer(getattr(self, name)) and getattr(self, name) >= 1):
                raise invalid(name, getattr(self, name), "an integer >= 1", "ServerSettings")
        if not (is_integer(self.max_queued_requests) and (self.max_queued_requests >= 1 or self.max_queued_requests == -1)):
            raise invalid("max_queued_requests", self.max_queued_requests, "an integer >= 1, or -1 (no bound)", "ServerSettings")
        for name in ("batch_wait_timeout_s", "num_cpus"):
            if not (is_real(getattr(self, name)) and getattr(self, name) >= 0):
                raise invalid(name, getattr(self, name), "a number >= 0", "ServerSettings")
