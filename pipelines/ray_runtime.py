"""Joining Ray (local by default, a cluster with --address) and a cluster-wide progress counter."""

from __future__ import annotations

import contextlib
import os
import socket

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
    _use_cluster_token(address)
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


TOKEN_FIX = (
    "Copy the head node's token file (~/.ray/auth_token there; `ray get-auth-token` prints it) to "
    "~/.ray/auth_token on this machine, or set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to it (docs/scaling.md)"
)


def _use_cluster_token(address: str) -> None:
    """Turns on Ray's token authentication in this driver when the cluster at `address` asks for it.

    Since Ray 2.5x, `ray start --head` enables token authentication whenever a token exists on
    the head (~/.ray/auth_token: a local `ray.init()` creates one), but a driver that joins an
    explicit address never enables it by itself (only `address='auto'` does): it sends no token and
    ray.init retries 'InvalidAuthToken' for 20 s, then fails with a bare ConnectionError. So the
    GCS is asked once, without a token: if it refuses, the token is found where Ray looks for it
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), checked against the GCS, and
    RAY_AUTH_MODE=token is set for this process. A cluster without authentication is joined as
    before. 'auto' and ray:// addresses are left to Ray."""
    if "://" in address or ":" not in address or os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return
    hostport = address
    if _gcs_answers(hostport, None) is not False:
        return  # no authentication (or a Ray without it): nothing to add
    token, source = _local_token()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        raise ValueError(
            f"the Ray cluster at --address {address!r} requires token authentication, but RAY_AUTH_MODE=disabled "
            f"is set here: unset it. {TOKEN_FIX}"
        )
    if token is None:
        raise ValueError(f"the Ray cluster at --address {address!r} requires token authentication and no token was found here. {TOKEN_FIX}")
    if _gcs_answers(hostport, token) is False:
        raise ValueError(
            f"the Ray cluster at --address {address!r} refused the token from {source}: it is not that cluster's token. {TOKEN_FIX}"
        )
    os.environ["RAY_AUTH_MODE"] = "token"  # read by this process's Ray core, and passed to what it starts
    with contextlib.suppress(Exception):  # Ray caches its config: refresh it as Ray itself does
        from ray._raylet import Config

        Config.initialize("")


def _local_token() -> tuple[str | None, str]:
    """(token, where it came from) as Ray looks for it: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token; (None, '') when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    with contextlib.suppress(OSError):
        with open(path) as f:
            token = f.read().strip()
        if token:
            return token, path
    return None, ""


def _gcs_answers(hostport: str, token: str | None, timeout_s: float = 10.0) -> bool | None:
    """Asks the GCS at host:port for its cluster id: True if it answers, False if it refuses the
    (missing) token, None if it cannot tell (another error, no grpc)."""
    try:
        import grpc
    except ImportError:
        return None
    metadata = [("authorization", f"Bearer {token}")] if token else []
    channel = grpc.insecure_channel(hostport)
    try:
        call = channel.unary_unary(
            "/ray.rpc.NodeInfoGcsService/GetClusterId", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        call(b"", timeout=timeout_s, metadata=metadata)
        return True
    except grpc.RpcError as err:
        return False if err.code() == grpc.StatusCode.UNAUTHENTICATED else None
    finally:
        channel.close()


def worker_env() -> dict[str, str]:
    """The driver's ZEROVERSE_* variables (ZEROVERSE_BLENDER_LOG, ZEROVERSE_FAULTS ...), to be set
    in every worker: on a cluster the workers do not inherit the driver's environment."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("ZEROVERSE_")}


def worker_options() -> dict:
    """Ray options that give a task or actor worker_env(); none when it is empty (a runtime env
    of its own makes Ray start separate worker processes, ~1 s each)."""
    env = worker_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Shape/view counts reported by workers anywhere in the cluster, polled by the driver, and a
    heartbeat per running task: a task whose beats stop for longer than the per-shape timeout is
    hung (workers report at least once per finished shape)."""

    def __init__(self) -> None:
        self.count = 0
        self.beats: dict = {}

    def add(self, n: int, key=None) -> None:
        self.count += n
        if key is not None and key in self.beats:
            self.beats[key] += 1

    def begin(self, key) -> None:
        self.beats[key] = self.beats.get(key, 0) + 1

    def end(self, key) -> None:
        self.beats.pop(key, None)

    def get(self) -> int:
        return self.count

    def state(self) -> tuple[int, dict]:
        return self.count, dict(self.beats)


HEAD = "node:__internal_head__"  # a resource only Ray's head node has


def new_progress_counter():
    """A ProgressCounter on the head node (with the GCS: if it goes, the cluster goes), never on a
    worker node whose loss would silence every heartbeat at once."""
    if ray.cluster_resources().get(HEAD):
        return ProgressCounter.options(resources={HEAD: 0.001}).remote()
    return ProgressCounter.remote()
