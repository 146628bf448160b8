"""`--address` against a stock `ray start --head` cluster, with Ray's token authentication on and off.

Ray 2.5x's `ray start --head` turns token authentication on whenever a token exists on the head
(~/.ray/auth_token, which any local `ray.init()` writes), while a driver joining an explicit
address never turns it on by itself: `zeroverse generate --address host:port` then failed with
'InvalidAuthToken' after 20 s of retries. Here a real head is started with `ray start --head
--block` (a HOME of its own, so the token file is the test's), the CLI joins it as its own
process, and the head is ended through its process group (not `ray stop`, which would stop every
Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from zeroverse.store.manifest import Manifest

pytestmark = [pytest.mark.ray, pytest.mark.blender]

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
TOKEN = "0123456789abcdef0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A clean Ray environment: this HOME's token file only, no auth mode or address inherited
    (the session's local Ray sets RAY_AUTH_MODE=token in the pytest process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "ZEROVERSE_FAULTS"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@pytest.fixture(scope="module", params=["token", "no-auth"])
def head(request, tmp_path_factory):
    """(address, HOME of the head, mode) of a one-CPU `ray start --head` cluster; with 'token' the
    head finds ~/.ray/auth_token and enables token authentication, as a stock Ray 2.5x does."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    if request.param == "token":
        (home / ".ray" / "auth_token").write_text(TOKEN)
    temp_dir = tempfile.mkdtemp(prefix="zvra-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    args = [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
            f"--temp-dir={temp_dir}", f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", "--disable-usage-stats"]  # fmt: skip
    proc = subprocess.Popen(args, env=_env(home), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray start --head did not come up: {proc.communicate()[0][-2000:]}")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", home, request.param
    finally:
        proc.terminate()  # `ray start --block` stops its cluster on SIGTERM (about a second)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of this head still in its session
        except ProcessLookupError:
            pass
        proc.communicate()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _generate(address: str, root: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    args = ["generate", "--n", "1", "--shard-size", "1", "--root", str(root), "--no-progress", "--address", address]
    return subprocess.run([sys.executable, "-m", "zeroverse.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_generate_joins_a_stock_ray_start_head(head, tmp_path):
    address, home, _ = head
    done = _generate(address, tmp_path / "root", _env(home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert Manifest.load(tmp_path / "root" / "shapes").shape_ids() == [0]


def test_a_missing_or_wrong_token_fails_at_once_naming_the_fix(head, tmp_path):
    address, _, mode = head
    if mode != "token":
        pytest.skip("a cluster without authentication accepts any driver")
    elsewhere = tmp_path / "driver-home"  # a driver machine without the head's token
    elsewhere.mkdir()
    for env, said in (
        (_env(elsewhere), "no token was found"),
        (_env(elsewhere, RAY_AUTH_TOKEN="f" * 32), "refused the token from $RAY_AUTH_TOKEN"),
    ):
        started = time.monotonic()
        done = _generate(address, tmp_path / "root", env, timeout=60)
        assert done.returncode == 1 and said in done.stderr and "~/.ray/auth_token" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and time.monotonic() - started < 30
    assert not (tmp_path / "root" / "shapes").exists()
    done = _generate(address, tmp_path / "root", _env(elsewhere, RAY_AUTH_TOKEN=TOKEN))  # the token, by environment
    assert done.returncode == 0, done.stderr[-3000:]
