"""Joining Ray (local by default, a cluster with --address) and a cluster-wide progress counter."""

from __future__ import annotations

import os
import socket
import time
from typing import Callable

import ray


def init_ray(address: str | None, workers: int | None) -> None:
    """Starts a local Ray with `workers` CPUs, or joins the cluster at `address`.

    Reuses an already initialised Ray (tests, notebooks) instead of starting a second one.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if address is None:
        ray.init(
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
        return
    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"could not join the Ray cluster at --address {address!r} ({err}). Start one with "
            "`ray start --head` and pass the address it prints, or omit --address for a local Ray."
        ) from err


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fails fast on a host:port nobody listens on: ray.init would retry it for minutes."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # 'auto' and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ValueError(
            f"could not join the Ray cluster at --address {address!r}: nothing answers there ({err}). "
            "Start one with `ray start --head` and pass the address it prints, or omit --address for a local Ray."
        ) from err


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Shape/view counts reported by workers anywhere in the cluster, polled by the driver."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n

    def get(self) -> int:
        return self.count


def throttled(report: Callable[[int], None], every_s: float = 0.25) -> Callable[[int], None]:
    """Batches progress reports so a fast worker sends a few messages per second, not thousands."""
    pending = 0
    last = time.monotonic()

    def add(n: int) -> None:
        nonlocal pending, last
        pending += n
        now = time.monotonic()
        if now - last >= every_s:
            report(pending)
            pending, last = 0, now

    def flush() -> None:
        nonlocal pending
        if pending:
            report(pending)
            pending = 0

    add.flush = flush  # type: ignore[attr-defined]
    return add
