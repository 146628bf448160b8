"""The farm at scale, on one machine: a real two-node Ray cluster (ray.cluster_utils.Cluster), an
unreachable --address, and the driver killed / interrupted / out of disk mid-run.

Each multi-node or CLI run is its own process (its own Ray driver): the pytest process may already
hold the session's local Ray (conftest's `ray_local`). What they prove:
- work of one run lands on both nodes, and its shards are byte-identical to a one-node run;
- `--address` nobody answers on fails at once, naming the address;
- SIGKILL of the driver, or Ctrl-C (exit 130), then a rerun gives exactly the undisturbed bytes:
  N shapes, no duplicates, no temporary files;
- a full disk fails the shards that do not fit with "No space left on device" and lists no partial
  shard (needs root to mount a 1 MB tmpfs; skipped otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zeroverse.store.manifest import Manifest

pytestmark = [pytest.mark.ray, pytest.mark.blender]

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).glob("*.parquet"))}


def listed_digests(directory: Path) -> dict[str, str]:
    """sha256 of every shard the manifest lists, checked against the manifest's own record."""
    manifest = Manifest.load(directory)
    out = {}
    for shard in manifest.shards:
        digest = hashlib.sha256((Path(directory) / shard["file"]).read_bytes()).hexdigest()
        assert digest == shard["sha256"], f"{shard['file']}: bytes differ from the manifest's record"
        out[shard["file"]] = digest
    return out


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "zeroverse.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_DEDUP_LOGS="1", PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    return env


# ---- a two-node cluster ------------------------------------------------------------------------


def test_two_node_cluster_uses_both_nodes_and_matches_one_node_bytes(ray_local, tmp_path):
    from pipelines.generate import GenerateConfig, run_generate
    from pipelines.render import RenderConfig, run_render
    from pipelines.texture_bank import prepare_bank
    from zeroverse.scene.cameras import RigConfig
    from zeroverse.scene.render_settings import RenderSettings

    multi = tmp_path / "multi"
    proc = subprocess.run(
        [PY, str(REPO / "tests" / "cluster_driver.py"), str(multi), "--n", "6", "--views", "2", "--resolution", "32"],
        cwd=REPO, capture_output=True, text=True, timeout=150, env=_env(),
    )  # fmt: skip
    lines = [l for l in proc.stdout.splitlines() if l.startswith("CLUSTER_RESULT ")]
    assert proc.returncode == 0 and lines, f"cluster driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1].split(" ", 1)[1])
    assert len(out["nodes"]) == 2
    assert out["generate"] == {"shapes": 6, "failures": 0, "written": 3}
    assert out["render"]["shapes"] == 6 and out["render"]["views"] == 12 and out["render"]["failures"] == 0
    # Two one-CPU workers on two one-CPU nodes: one on each, for both stages.
    assert set(out["render_nodes"]) == set(out["nodes"]), out
    assert "generate_nodes_error" not in out, out.get("generate_nodes_error")
    assert set(out["generate_nodes"]) == set(out["nodes"]), out

    # The same seed and config on the session's one-node Ray: the same bytes, shard by shard.
    single = tmp_path / "single"
    bank = prepare_bank(single, None, 1024)
    run_generate(GenerateConfig(root=single, n=6, seed=0, shard_size=2, textures=bank.describe()), workers=1, progress=False)
    run_render(
        RenderConfig(root=single, rig=RigConfig(num_views=2), settings=RenderSettings(resolution=32, samples=4), shapes_per_shard=2),
        workers=1,
        progress=False,
    )
    for stage in ("shapes", "views"):
        a, b = listed_digests(multi / stage), listed_digests(single / stage)
        assert len(a) == 3 and a == b, f"{stage}: two-node shards differ from one-node shards"
        assert digests(multi / stage) == a, f"{stage}: unlisted files left behind"
        # Manifests differ only in the timings.
        ma, mb = (json.loads((r / stage / "manifest.json").read_text()) for r in (multi, single))
        for m in (ma, mb):
            for shard in m["shards"]:
                shard.pop("seconds")
        assert ma == mb


def test_unreachable_address_fails_fast_naming_it(tmp_path):
    started = time.monotonic()
    proc = cli("generate", "--n", "2", "--root", str(tmp_path / "root"), "--address", "127.0.0.1:1", "--no-progress", timeout=60)
    assert proc.returncode != 0
    assert "127.0.0.1:1" in proc.stderr and "could not join the Ray cluster" in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert not list((tmp_path / "root").glob("shapes/*.parquet"))


# ---- the driver killed, interrupted, out of disk ------------------------------------------------------


def _generate_args(root: Path, n: int = 12) -> list[str]:
    return ["generate", "--n", str(n), "--shard-size", "1", "--workers", "2", "--root", str(root), "--no-progress"]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> Path:
    """12 shapes in shards of 1, written by one uninterrupted CLI run."""
    root = tmp_path_factory.mktemp("undisturbed")
    proc = cli(*_generate_args(root))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def _listed(root: Path) -> int:
    try:
        manifest = Manifest.load(root / "shapes")
    except (ValueError, OSError):  # mid-rename on a slow filesystem: try again
        return 0
    return 0 if manifest is None else len(manifest.shards)


def _assert_exactly_once(root: Path, undisturbed: Path, n: int = 12) -> None:
    shapes = root / "shapes"
    manifest = Manifest.load(shapes)
    ids = manifest.shape_ids()
    assert ids == list(range(n)), "shapes missing or duplicated"
    assert manifest.failures == []
    assert not list(shapes.glob(".tmp-*")), "temporary files left visible"
    assert listed_digests(shapes) == listed_digests(undisturbed / "shapes") == digests(shapes)


# Timing-dependent (the signal must land while shards are still being written): failed once in
# six full runs on a loaded 2-core box, so it runs in `make chaos`, not in the default suite.
@pytest.mark.chaos
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)], ids=["sigkill", "sigint"])
def test_driver_stopped_mid_run_then_rerun_gives_the_undisturbed_bytes(tmp_path, undisturbed, sig, code):
    root = tmp_path / "root"
    # A session of its own: the Ray processes a killed driver leaves behind can be reaped by group.
    proc = subprocess.Popen(
        [PY, "-m", "zeroverse.cli", *_generate_args(root)], cwd=REPO, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _listed(root) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        listed_at_stop = _listed(root)
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert 1 <= listed_at_stop < 12, f"{listed_at_stop} shards listed when stopped: not mid-run"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err[-2000:]
        if sig == signal.SIGINT:
            assert "rerun the same command to resume" in err
        # What a reader sees now: only whole, listed shards.
        listed_digests(root / "shapes")
    finally:
        if proc.poll() is None:
            proc.kill()
        with _suppress():
            os.killpg(proc.pid, signal.SIGKILL)  # Ray processes orphaned by the kill (our group only)
    rerun = cli(*_generate_args(root))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "shapes already there" in rerun.stdout
    _assert_exactly_once(root, undisturbed)


def test_full_disk_fails_clearly_and_lists_no_partial_shard(tmp_path, undisturbed):
    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        root = mnt / "root"
        proc = cli(*_generate_args(root))  # ~2 MB of shards into 1 MB
        assert proc.returncode != 0
        assert "No space left on device" in proc.stdout + proc.stderr, proc.stderr[-2000:]
        shapes = root / "shapes"
        listed = listed_digests(shapes)  # every listed shard is whole (sha256 as recorded) ...
        assert 0 < len(listed) < 12
        assert digests(shapes) == listed, "an unlisted (partial) shard file is visible"
        assert not list(shapes.glob(".tmp-*"))
        expected = listed_digests(undisturbed / "shapes")
        assert all(expected[name] == d for name, d in listed.items())  # ... and the undisturbed bytes
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError))
