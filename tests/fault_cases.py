"""The farm's fault matrix: each case a real, tiny run with a real fault, then the recovery.

Used by tests/test_faults.py (one test per case) and bench/chaos.py (the whole table). A case
starts from a fresh root (empty, or a copy of the reference's shapes), injects its fault through a
real mechanism (ZEROVERSE_FAULTS read inside the workers: SIGKILL, SIGSEGV or SIGSTOP of the
worker process, or a raise; signals to the driver; a full tmpfs; a bind mount that makes the
manifest's rename fail; bytes truncated or flipped in a shard; bad values on the command line),
checks the outcome it expects (exit code, the message, the ledger, what `validate` says), then
recovers the way a user would (rerun the same command, after growing the disk or rebuilding the
damaged shard). `final_state` then asks of the root: exactly N shapes and N x V views, nothing
ledgered, no temporary or unlisted files, and every listed file byte-identical (sha256) to the
undisturbed reference run with the same seed; manifests equal apart from the timings.

Byte identity of files (not just table contents) is the check because the writer is
deterministic: pyarrow 21 writes the same bytes for the same table, metadata and options (no
timestamps), and every value in the tables derives from the seed. Only each manifest's per-shard
`seconds` differs between runs.

    python tests/fault_cases.py node-kill ROOT STAGE   # helper process for the node-kill cases
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from zeroverse.store.manifest import Manifest

N, V, SEED = 6, 2, 7  # shapes, views per shape, seed
SHARD, SPS, RES = 2, 2, 32  # shapes per shape shard, shapes per view shard, pixels
FAST_TIMEOUT = 4.0  # --shape-timeout of the hang cases: a legit 32² shape takes well under 1 s


# ---- the runs ---------------------------------------------------------------------------------------


def generate_args(root: Path, *extra: str) -> list[str]:
    return ["generate", "--n", str(N), "--seed", str(SEED), "--shard-size", str(SHARD), "--root", str(root), "--no-progress", *extra]


def render_args(root: Path, *extra: str) -> list[str]:
    return ["render", "--root", str(root), "--views", str(V), "--resolution", str(RES), "--engine", "cycles",
            "--samples", "1", "--shapes-per-shard", str(SPS), "--no-progress", *extra]  # fmt: skip


def generate_config(root: Path, **changes):
    """What `generate_args` builds (the CLI and the library must give the same bytes)."""
    from pipelines.generate import GenerateConfig
    from pipelines.texture_bank import prepare_bank

    bank = prepare_bank(root, None, 1024)
    return GenerateConfig(root=root, n=N, seed=SEED, shard_size=SHARD, textures=bank.describe(), **changes)


def render_config(root: Path, **changes):
    """What `render_args` builds."""
    from pipelines.render import RenderConfig
    from zeroverse.scene.cameras import RigConfig
    from zeroverse.scene.render_settings import RenderSettings

    settings = RenderSettings(engine="cycles", resolution=RES, samples=1)
    return RenderConfig(root=root, rig=RigConfig(num_views=V), settings=settings, shapes_per_shard=SPS, **changes)


def build_reference(root: Path) -> Path:
    """The undisturbed run every case is compared with (needs an initialised Ray)."""
    from pipelines.generate import run_generate
    from pipelines.render import run_render

    gen = run_generate(generate_config(root), progress=False)
    assert gen.shapes == N and not gen.failures, gen
    ren = run_render(render_config(root), progress=False)
    assert ren.views == N * V and not ren.failures, ren
    return root


# ---- what a root holds ------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class State:
    shapes: int = 0
    views: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.problems


def _manifest_body(directory: Path) -> dict:
    body = json.loads((directory / "manifest.json").read_text())
    for shard in body["shards"]:
        shard.pop("seconds", None)
    return body


def final_state(root: Path, reference: Path, shapes_root: Path | None = None) -> State:
    """Exactly N shapes and N x V views, byte-identical to `reference`, nothing half-written.
    `shapes_root`: where the shapes live when they are not in `root` (a versioned views root)."""
    import pyarrow.parquet as pq

    from zeroverse.review.validate import validate_root

    state = State()
    for stage, base in (("shapes", shapes_root or root), ("views", root)):
        directory, ref = Path(base) / stage, Path(reference) / stage
        manifest = Manifest.load(directory) if directory.is_dir() else None
        if manifest is None:
            state.problems.append(f"{directory}: no manifest")
            continue
        if manifest.failures:
            state.problems.append(f"{directory}: {len(manifest.failures)} shape(s) still ledgered as failed")
        temporaries = sorted(p.name for p in directory.glob(".tmp-*"))
        if temporaries:
            state.problems.append(f"{directory}: temporary files visible: {temporaries}")
        listed = {s["file"] for s in manifest.shards}
        unlisted = sorted(p.name for p in directory.glob("*.parquet") if p.name not in listed)
        if unlisted:
            state.problems.append(f"{directory}: unlisted shard files: {unlisted}")
        expected = {s["file"]: s["sha256"] for s in Manifest.load(ref).shards}
        for shard in manifest.shards:
            path = directory / shard["file"]
            if not path.exists():
                state.problems.append(f"{path}: listed but missing")
            elif sha256(path) != shard["sha256"]:
                state.problems.append(f"{path}: bytes differ from its own manifest record")
            elif expected.get(shard["file"]) != shard["sha256"]:
                state.problems.append(f"{path}: bytes differ from the undisturbed run")
        if set(expected) != listed:
            state.problems.append(f"{directory}: lists {sorted(listed)}, the undisturbed run {sorted(expected)}")
        if _manifest_body(directory) != _manifest_body(ref):
            state.problems.append(f"{directory}/manifest.json differs from the undisturbed run's (beyond timings)")
        if stage == "shapes":
            ids = manifest.shape_ids()
            state.shapes = len(ids)
            if ids != list(range(N)):
                state.problems.append(f"{directory}: shape ids {ids}, expected 0..{N - 1} once each")
        else:
            per_shape: dict[int, int] = {}
            for shard in manifest.shards:
                path = directory / shard["file"]
                if path.exists():
                    for sid in pq.read_table(path, columns=["shape_id"]).column("shape_id").to_pylist():
                        per_shape[sid] = per_shape.get(sid, 0) + 1
            state.views = sum(per_shape.values())
            if per_shape != {sid: V for sid in range(N)}:
                state.problems.append(f"{directory}: views per shape {per_shape}, expected {V} for each of 0..{N - 1}")
    for base in {Path(root), Path(shapes_root or root)}:
        report = validate_root(base)
        state.problems += [f"validate: {p}" for p in report.problems]
    return state


# ---- a case -------------------------------------------------------------------------------------------


class Skip(Exception):
    """The case cannot run here (e.g. no root to mount a tmpfs)."""


@dataclass
class Run:
    """One case's workspace: the reference root (read-only) and a directory of its own."""

    reference: Path
    work: Path
    shapes_root: Path | None = None  # set by a case whose shapes end up elsewhere
    mounts: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.work / "root"

    @property
    def faults_dir(self) -> Path:
        path = self.work / "faults"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fresh(self, what: str, root: Path | None = None, textures: bool = True) -> Path:
        """'empty': no shapes yet; 'shapes': the reference's shapes, no views. With the reference's
        texture cache (deterministic, made lazily by render; copied only to save time)."""
        root = root or self.root
        root.mkdir(parents=True, exist_ok=True)
        if what == "shapes":
            shutil.copytree(self.reference / "shapes", root / "shapes")
        if textures:
            shutil.copytree(self.reference / "textures", root / "textures")
        return root

    @contextlib.contextmanager
    def faults(self, spec: str) -> Iterator[None]:
        """ZEROVERSE_FAULTS for runs of this process (the drivers forward it to their workers)."""
        saved = {k: os.environ.get(k) for k in ("ZEROVERSE_FAULTS", "ZEROVERSE_FAULTS_DIR")}
        os.environ.update(ZEROVERSE_FAULTS=spec, ZEROVERSE_FAULTS_DIR=str(self.faults_dir))
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def cli(self, *args: str) -> tuple[int, str]:
        """The CLI in this process (it reuses the Ray already running here)."""
        from click.testing import CliRunner

        from zeroverse.cli import main

        result = CliRunner().invoke(main, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    def spawn(self, *args: str, faults: str | None = None) -> subprocess.Popen:
        """The CLI as its own driver process (own local Ray), in a session of its own so that the
        Ray processes it starts can be reaped by group."""
        env = _child_env()
        if faults:
            env.update(ZEROVERSE_FAULTS=faults, ZEROVERSE_FAULTS_DIR=str(self.faults_dir))
        proc = subprocess.Popen(
            [sys.executable, "-m", "zeroverse.cli", *args], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def mount_tmpfs(self, path: Path, size_bytes: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        self.mounts.append(path)
        return path

    def grow_tmpfs(self, path: Path, size_bytes: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True, capture_output=True)

    def bind_over(self, path: Path) -> None:
        """Bind-mounts `path` onto itself: a rename onto it then fails (EBUSY), as on a filesystem
        that refuses the manifest's atomic replace, while the file stays readable."""
        done = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"cannot bind-mount (needs root): {done.stderr.strip()}")
        self.mounts.append(path)

    def unmount(self, path: Path) -> None:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        if path in self.mounts:
            self.mounts.remove(path)

    def cleanup(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
            with contextlib.suppress(Exception):
                proc.communicate(timeout=10)
        for path in reversed(list(self.mounts)):
            self.unmount(path)


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROVERSE_FAULTS")}
    env.update(RAY_DEDUP_LOGS="1", PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass(frozen=True)
class Case:
    name: str
    fault: str
    expected: str
    run: Callable[[Run], str]  # injects the fault, checks the expected outcome, recovers; returns what it saw
    chaos: bool = False  # slow or timing-dependent: `make chaos` and bench/chaos.py only


@dataclass
class Outcome:
    case: Case
    observed: str
    state: State | None
    seconds: float
    error: str | None = None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.error is None and self.state is not None and self.state.identical


def run_case(case: Case, reference: Path, work: Path) -> Outcome:
    run = Run(reference, work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    observed, error, state = "", None, None
    try:
        observed = case.run(run)
    except Skip as skip:
        return Outcome(case, "", None, time.monotonic() - started, skipped=str(skip))
    except AssertionError as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        error = f"unexpected outcome: {err or where.line} (fault_cases.py line {where.lineno})"
    except Exception as err:  # noqa: BLE001 - reported in the table / the failing test
        error = f"{type(err).__name__}: {err}"
    finally:
        run.cleanup()
    if error is None:
        state = final_state(run.root, reference, run.shapes_root)
    return Outcome(case, observed, state, time.monotonic() - started, error)


# ---- helpers for the cases ----------------------------------------------------------------------------


def generate(run: Run, root: Path | None = None, **changes):
    from pipelines.generate import run_generate

    return run_generate(generate_config(root or run.root, **changes), progress=False)


def render(run: Run, root: Path | None = None, **changes):
    from pipelines.render import run_render

    return run_render(render_config(root or run.root, **changes), progress=False)


def complete(run: Run, root: Path | None = None) -> str:
    """The recovery every case ends with: rerun both stages with no fault, as a user would."""
    root = root or run.root
    code, gen = run.cli(*generate_args(root))
    assert code == 0, f"rerun of generate: exit {code}: {gen[-800:]}"
    code, ren = run.cli(*render_args(root))
    assert code == 0, f"rerun of render: exit {code}: {ren[-800:]}"
    written = [int(m.group(1)) if (m := re.search(r"\((\d+) shards written", out)) else "?" for out in (gen, ren)]
    return f"rerun wrote {written[0]} shape + {written[1]} view shard(s), exit 0"


def ledgered(directory: Path) -> list[int]:
    manifest = Manifest.load(directory)
    return sorted(f["shape_id"] for f in manifest.failures) if manifest else []


def validate_output(root: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from zeroverse.cli import main

    result = CliRunner().invoke(main, ["validate", "--root", str(root)])
    return result.exit_code, result.output


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def listed_count(directory: Path) -> int:
    try:
        manifest = Manifest.load(directory)
    except (ValueError, OSError):  # mid-rename: ask again
        return 0
    return 0 if manifest is None else len(manifest.shards)


def killed(marker: Path, timeout: float = 30.0) -> None:
    """The process that fired a fault (its pid is in the marker) is gone: no frozen worker left."""
    pid = int(marker.read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_for(gone, timeout, f"the frozen worker {pid} to be killed")


def assert_nothing_half_written(directory: Path, reference: Path) -> None:
    """Every shard file a reader could see is whole: listed with its sha256, or (a shard that
    landed after the manifest could no longer be saved) unlisted but byte-identical to the
    undisturbed run's. No temporary file remains after a run that stopped on an error."""
    manifest = Manifest.load(directory)
    listed = {s["file"]: s["sha256"] for s in manifest.shards} if manifest else {}
    expected = {s["file"]: s["sha256"] for s in Manifest.load(reference).shards}
    for path in directory.glob("*.parquet"):
        digest = sha256(path)
        assert digest == listed.get(path.name, expected.get(path.name)), f"{path.name} is half-written or wrong"
    assert not list(directory.glob(".tmp-*")), f"temporary files visible in {directory}"


def pages(path: Path) -> int:
    """Bytes a file takes on tmpfs (whole 4 KiB pages)."""
    return -(-path.stat().st_size // 4096) * 4096


# ---- the cases: generate ------------------------------------------------------------------------------


def gen_worker_killed(run: Run) -> str:
    run.fresh("empty")
    with run.faults("generate:kill@3"):
        result = generate(run)
    assert result.failures == [] and result.shapes == N, result
    assert (run.faults_dir / "generate-kill-3-0").exists(), "the fault never fired"
    return f"Ray reran the task, {result.shapes} shapes, no failure; " + complete(run)


def gen_blender_crash_retried(run: Run) -> str:
    run.fresh("empty")
    with run.faults("generate:segv@4x2"):
        code, out = run.cli(*generate_args(run.root))
    assert code == 0, out[-800:]
    assert (run.faults_dir / "generate-segv-4-1").exists(), "the second crash never happened"
    return "2 segfaults at shape 4, third try built it, exit 0; " + complete(run)


def gen_crash_every_time_ledgered(run: Run) -> str:
    run.fresh("empty")
    with run.faults("generate:kill@4x*"):
        code, out = run.cli(*generate_args(run.root))
    assert code == 1, f"exit {code}: {out[-800:]}"
    assert ledgered(run.root / "shapes") == [4, 5], ledgered(run.root / "shapes")
    assert "shape 4:" in out and "worker died" in out, out[-800:]
    vcode, vout = validate_output(run.root)
    assert vcode == 1 and "shape 4 failed and is missing" in vout, vout[-800:]
    return "exit 1, shard 4-5 in the ledger (worker crashed 4 times), validate names shapes 4, 5; " + complete(run)


def gen_shape_raises_ledgered(run: Run) -> str:
    run.fresh("empty")
    with run.faults("generate:raise@1x*"):
        code, out = run.cli(*generate_args(run.root))
    assert code == 1 and "shape 1: RuntimeError: injected fault" in out, out[-800:]
    assert ledgered(run.root / "shapes") == [1]
    assert Manifest.load(run.root / "shapes").shape_ids() == [0, 2, 3, 4, 5]  # the rest of its shard kept
    vcode, vout = validate_output(run.root)
    assert vcode == 1 and "shape 1 failed and is missing" in vout, vout[-800:]
    return "exit 1, shape 1 ledgered, shape 0 of its shard kept, validate not OK; " + complete(run)


def gen_hang_times_out(run: Run) -> str:
    run.fresh("empty")
    with run.faults("generate:hang@2"):
        result = generate(run, shape_timeout_s=FAST_TIMEOUT)
    assert result.failures == [] and result.retries == 1 and result.shapes == N, result
    killed(run.faults_dir / "generate-hang-2-0")
    return f"worker frozen at shape 2, cancelled after {FAST_TIMEOUT:g} s silent, resubmitted once; " + complete(run)


def gen_hang_every_time_ledgered(run: Run) -> str:
    run.fresh("empty")
    with run.faults("generate:hang@2x*"):
        result = generate(run, shape_timeout_s=FAST_TIMEOUT, max_attempts=2)
    assert sorted(f["shape_id"] for f in result.failures) == [2, 3], result.failures
    assert all("timed out" in f["reason"] and "after 2 attempts" in f["reason"] for f in result.failures)
    assert ledgered(run.root / "shapes") == [2, 3]
    return "2 hangs, shard 2-3 ledgered as timed out; " + complete(run)


def gen_disk_full(run: Run) -> str:
    mnt = run.mount_tmpfs(run.work / "disk", 640 * 1024)  # the shards take ~1.1 MB
    root = run.fresh("empty", mnt / "root", textures=False)
    code, out = run.cli(*generate_args(root))
    assert code == 1 and "No space left on device" in out, f"exit {code}: {out[-800:]}"
    shapes = root / "shapes"
    manifest = Manifest.load(shapes)
    listed = manifest.shape_ids() if manifest else []
    assert len(listed) < N
    assert_nothing_half_written(shapes, run.reference / "shapes")
    if manifest is not None:  # the manifest could be saved: the lost shards are in its ledger
        assert sorted(set(listed) | set(ledgered(shapes))) == list(range(N)), (listed, ledgered(shapes))
    run.grow_tmpfs(mnt, 64 << 20)
    shutil.move(str(root), str(run.root))  # on with a roomy disk (the tmpfs is unmounted at the end)
    return f"exit 1 'No space left on device', {len(listed)} shapes listed, the rest ledgered, no partial file; " + complete(run)


def gen_manifest_unsavable(run: Run) -> str:
    run.fresh("empty")
    code, out = run.cli(*generate_args(run.root)[:2], "2", *generate_args(run.root)[3:])  # --n 2: shard 0-1 only
    assert code == 0, out[-800:]
    manifest_path = run.root / "shapes" / "manifest.json"
    before = manifest_path.read_bytes()
    run.bind_over(manifest_path)
    code, out = run.cli(*generate_args(run.root))
    run.unmount(manifest_path)
    assert code == 1 and f"could not save {manifest_path}" in out and "previous manifest is unchanged" in out, out[-800:]
    assert "Traceback" not in out
    assert manifest_path.read_bytes() == before, "the previous manifest was changed"
    listed = {s["file"] for s in Manifest.load(run.root / "shapes").shards}
    assert listed == {"shapes-000000000-000000001.parquet"}, listed
    return "exit 1 'could not save .../manifest.json', previous manifest byte-identical; " + complete(run)


def gen_config_change_refused(run: Run) -> str:
    run.fresh("empty")
    complete(run)
    before = {p: p.read_bytes() for p in (run.root / "shapes").iterdir()}
    code, out = run.cli(*generate_args(run.root), "--seed", "8")
    assert code == 1 and "--seed 7" in out and "Nothing was changed" in out, out[-800:]
    code, out = run.cli(*[a if a != str(SHARD) else "3" for a in generate_args(run.root)])
    assert code == 1 and "shard_size: root has 2, asked 3" in out and "--new-version" in out, out[-800:]
    assert {p: p.read_bytes() for p in (run.root / "shapes").iterdir()} == before
    return "--seed 8 and --shard-size 3 refused naming the difference, root untouched"


def gen_config_change_new_version(run: Run) -> str:
    run.fresh("empty")
    complete(run)
    code, out = run.cli(*generate_args(run.root), "--seed", "8", "--new-version")
    assert code == 0 and "kept in" in out, out[-800:]
    old = run.root / "versions" / "1"
    assert Manifest.load(run.root / "shapes").seed == 8 and not (run.root / "views").exists()
    # The old version, shapes and views together, is the undisturbed reference, untouched.
    state = final_state(old, run.reference)
    assert state.identical, state.problems
    shutil.rmtree(run.root / "shapes")  # back to the reference seed for the common final check
    shutil.move(str(old / "shapes"), str(run.root / "shapes"))
    shutil.move(str(old / "views"), str(run.root / "views"))
    return "--seed 8 --new-version: seed-7 shapes+views moved intact to versions/1, seed 8 generated"


def gen_corrupt_output_rebuilt(run: Run) -> str:
    """A listed shape shard truncated behind zeroverse's back: the next generate notices (size)."""
    run.fresh("shapes")
    victim = run.root / "shapes" / "shapes-000000002-000000003.parquet"
    victim.write_bytes(victim.read_bytes()[:1000])
    result = generate(run)
    assert result.written == [victim.name], result.written
    return "rerun of generate rebuilt the truncated shard (size differs from its record); " + complete(run)


def traversal_manifest_refused(run: Run) -> str:
    """A shapes manifest edited to name '../../victim.txt' for a shard: a rerun would have rebuilt
    that shard and deleted the file the entry named, outside the root."""
    run.fresh("shapes")
    victim = run.work / "victim.txt"
    victim.write_text("not zeroverse's")
    manifest = run.root / "shapes" / "manifest.json"
    good = manifest.read_text()
    body = json.loads(good)
    body["shards"][1]["file"] = os.path.relpath(victim, manifest.parent)
    manifest.write_text(json.dumps(body))
    for args in (generate_args(run.root), render_args(run.root), ["validate", "--root", str(run.root)]):
        code, out = run.cli(*args)
        assert code == 1 and "shard entry 1" in out and "'../../victim.txt'" in out and "Restore that entry" in out, out[-800:]
        assert "Traceback" not in out
    assert victim.read_text() == "not zeroverse's" and not (run.root / "views").exists()
    manifest.write_text(good)  # the fix the message names: restore the entry's file name
    return "generate, render and validate exit 1 naming entry 1 and the fix, the file outside the root untouched; " + complete(run)


# ---- the cases: render ---------------------------------------------------------------------------------


def render_worker_killed(run: Run) -> str:
    run.fresh("shapes")
    with run.faults("render:kill@3"):
        result = render(run)
    assert result.failures == [] and result.retries == 1, result
    return "shard 2-3 rerendered in a fresh worker, exit 0; " + complete(run)


def render_scratch_swept(run: Run) -> str:
    """Workers end by ray.kill (a crash, a hang, the end of a run), so none of their own cleanup
    runs: no worker's scratch folder (its EXR round trips, on /dev/shm) may outlive the run, nor
    one a worker killed in an earlier run left behind."""
    run.fresh("shapes")
    base = run.work / "shm"
    base.mkdir()
    probe = "import os; s = open(f'/proc/{os.getpid()}/stat').read().rsplit(')', 1)[1].split(); print(os.getpid(), s[19])"
    pid, start = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    earlier = base / f"zv-render-{os.stat('/proc/self/ns/pid').st_ino}-{pid}-{start}-earlier"  # its owner has exited
    earlier.mkdir()
    (earlier / "view.exr").write_bytes(b"x" * 4096)
    saved = os.environ.get("ZEROVERSE_SCRATCH")
    os.environ["ZEROVERSE_SCRATCH"] = str(base)  # forwarded to the workers like every ZEROVERSE_* variable
    try:
        with run.faults("render:kill@3"):
            result = render(run)
    finally:
        if saved is None:
            os.environ.pop("ZEROVERSE_SCRATCH")
        else:
            os.environ["ZEROVERSE_SCRATCH"] = saved
    assert result.failures == [] and result.retries == 1, result
    left = sorted(p.name for p in base.iterdir())
    assert left == [], f"scratch left in {base}: {left}"
    return "a worker SIGKILLed mid-shard, the rest ray.kill'ed at the end: no scratch folder left, nor an earlier run's; " + complete(run)


def render_blender_crash_retried(run: Run) -> str:
    run.fresh("shapes")
    with run.faults("render:segv@2x2"):
        code, out = run.cli(*render_args(run.root))
    assert code == 0 and "2 retries" in out, out[-800:]
    return "2 segfaults at shape 2, the third worker rendered it, exit 0; " + complete(run)


def render_crash_every_time_ledgered(run: Run) -> str:
    run.fresh("shapes")
    with run.faults("render:segv@4x*"):
        code, out = run.cli(*render_args(run.root))
    assert code == 1 and "worker died" in out and "after 3 attempts" in out, out[-800:]
    assert ledgered(run.root / "views") == [4, 5]
    vcode, vout = validate_output(run.root)
    assert vcode == 1 and "shape 5 failed and is missing" in vout, vout[-800:]
    return "exit 1, shard 4-5 ledgered after 3 crashed workers, validate names it; " + complete(run)


def render_hang_times_out(run: Run) -> str:
    run.fresh("shapes")
    with run.faults("render:hang@3"):
        result = render(run, shape_timeout_s=FAST_TIMEOUT)
    assert result.failures == [] and result.retries == 1, result
    killed(run.faults_dir / "render-hang-3-0")
    return f"worker frozen at shape 3, killed after {FAST_TIMEOUT:g} s without a finished shape, retried; " + complete(run)


def render_hang_every_time_ledgered(run: Run) -> str:
    run.fresh("shapes")
    with run.faults("render:hang@0x*"):
        result = render(run, shape_timeout_s=FAST_TIMEOUT, max_attempts=2)
    assert sorted(f["shape_id"] for f in result.failures) == [0, 1] and result.retries == 1, result
    assert all("timed out" in f["reason"] for f in result.failures)
    assert ledgered(run.root / "views") == [0, 1]
    return "hung twice, shard 0-1 ledgered as timed out; " + complete(run)


def render_shape_raises_ledgered(run: Run) -> str:
    run.fresh("shapes")
    with run.faults("render:raise@5x*"):
        result = render(run)
    assert [f["shape_id"] for f in result.failures] == [5] and result.views == (N - 1) * V, result
    assert Manifest.load(run.root / "views").shard_for(4)["shape_ids"] == [4]
    return "shape 5 failed twice in its worker, ledgered, shape 4 of its shard written; " + complete(run)


def render_disk_full(run: Run) -> str:
    mnt = run.mount_tmpfs(run.work / "disk", 64 << 20)
    root = run.fresh("shapes", mnt / "root", textures=False)  # no texture cache: its writes fail too (and are tolerated)
    used = sum(pages(p) for p in (root / "shapes").iterdir())
    run.grow_tmpfs(mnt, used + 16 * 1024)  # room for the manifest, none for a 30 KB view shard
    result = render(run, root, max_attempts=1)  # a retry would fail the same way: keep the case short
    assert sorted(f["shape_id"] for f in result.failures) == list(range(N)), result.failures
    assert all("No space left on device" in f["reason"] for f in result.failures), result.failures[0]
    views = root / "views"
    assert ledgered(views) == list(range(N)) and not list(views.glob("*.parquet"))
    assert_nothing_half_written(views, run.reference / "views")
    run.grow_tmpfs(mnt, 64 << 20)
    shutil.move(str(root), str(run.root))
    return "every shard failed 'No space left on device', all ledgered, no shard file visible; " + complete(run)


def render_manifest_unsavable(run: Run) -> str:
    run.fresh("shapes")
    render(run, limit=2)  # a previous manifest: shard 0-1
    manifest_path = run.root / "views" / "manifest.json"
    before = manifest_path.read_bytes()
    run.bind_over(manifest_path)
    code, out = run.cli(*render_args(run.root))
    run.unmount(manifest_path)
    assert code == 1 and f"could not save {manifest_path}" in out and "Traceback" not in out, out[-800:]
    assert manifest_path.read_bytes() == before
    return "exit 1 'could not save .../manifest.json', previous manifest byte-identical; " + complete(run)


def _truncate_shape_shard(run: Run) -> Path:
    victim = run.root / "shapes" / "shapes-000000002-000000003.parquet"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


def render_truncated_input_refused(run: Run) -> str:
    run.fresh("shapes")
    victim = _truncate_shape_shard(run)
    code, out = run.cli(*render_args(run.root))
    assert code == 1 and str(victim) in out and "--verify" in out and "--skip-corrupt" in out, out[-800:]
    assert not (run.root / "views").exists(), "render wrote before refusing"
    vcode, vout = validate_output(run.root)
    assert vcode == 1 and str(victim) in vout, vout[-800:]
    return "render exit 1 naming the file, --verify and --skip-corrupt, nothing written; validate names it; " + complete(run)


def render_corrupt_input_skipped(run: Run) -> str:
    run.fresh("shapes")
    victim = run.root / "shapes" / "shapes-000000002-000000003.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size: only the sha256 (checked in the worker) tells
    victim.write_bytes(bytes(data))
    code, out = run.cli(*render_args(run.root))
    assert code == 1 and str(victim) in out and "--skip-corrupt" in out, out[-800:]
    code, out = run.cli(*render_args(run.root, "--skip-corrupt"))
    assert code == 1 and "shape 2: skipped: input shape shard" in out, out[-800:]
    assert ledgered(run.root / "views") == [2, 3] and Manifest.load(run.root / "views").shape_ids() == [0, 1, 4, 5]
    vcode, vout = validate_output(run.root)
    assert vcode == 1 and "sha256" in vout and "shape 3 failed and is missing" in vout, vout[-800:]
    code, out = run.cli(*generate_args(run.root, "--verify"))
    assert code == 0 and "1 shards written" in out, out[-800:]
    return "refused, then --skip-corrupt: shapes 2, 3 ledgered, 0, 1, 4, 5 rendered; generate --verify rebuilt it; " + complete(run)


def render_config_change(run: Run) -> str:
    run.fresh("empty")
    complete(run)
    views = run.root / "views"
    before = {p.name: p.read_bytes() for p in views.iterdir()}
    code, out = run.cli(*[a if a != str(RES) else "48" for a in render_args(run.root)])
    assert code == 1 and "resolution: root has 32, asked 48" in out and "--new-version" in out, out[-800:]
    assert {p.name: p.read_bytes() for p in views.iterdir()} == before
    code, out = run.cli(*[a if a != str(RES) else "48" for a in render_args(run.root)], "--new-version")
    assert code == 0 and "kept in" in out, out[-800:]
    old = run.root / "versions" / "1"
    assert {p.name: p.read_bytes() for p in (old / "views").iterdir()} == before
    assert Manifest.load(views).config["render"]["resolution"] == 48
    shutil.rmtree(views)
    shutil.move(str(old / "views"), str(views))
    return "--resolution 48 refused naming it; with --new-version the 32² views moved intact to versions/1"


# ---- the cases: the command line and the driver --------------------------------------------------------


BAD_VALUES = [
    (["generate", "--n", "0"], "0 is not positive"),
    (["generate", "--n", "4", "--workers", "0"], "0 is not positive"),
    (["generate", "--n", "4", "--seed", "-1"], "--seed -1"),
    (["generate", "--n", "4", "--shard-size", "-2"], "-2 is not positive"),
    (["generate", "--n", "4", "--shape-timeout", "0"], "--shape-timeout 0.0"),
    (["render", "--resolution", "8"], "--resolution 8: use 16..4096"),
    (["render", "--engine", "vulkan"], "'vulkan'"),
    (["render", "--shape-timeout", "-5"], "--shape-timeout -5.0"),
    (["render", "--gpus-per-worker", "2"], "--gpus-per-worker 2.0"),
    (["render", "--views", "0"], "0 is not positive"),
]


def bad_cli_values(run: Run) -> str:
    run.fresh("empty")
    complete(run)
    before = {p: p.read_bytes() for stage in ("shapes", "views") for p in (run.root / stage).iterdir()}
    for args, named in BAD_VALUES:
        code, out = run.cli(*args, "--root", str(run.root), "--no-progress")
        assert code != 0 and named in out, f"{args}: exit {code}, {out[-400:]!r} does not name {named!r}"
        assert "Traceback" not in out
    assert {p: p.read_bytes() for stage in ("shapes", "views") for p in (run.root / stage).iterdir()} == before
    return f"{len(BAD_VALUES)} bad values refused, each naming the value, root untouched"


def unreachable_address(run: Run) -> str:
    run.fresh("empty")
    started = time.monotonic()
    proc = run.spawn(*generate_args(run.root), "--address", "127.0.0.1:1")
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 1 and "127.0.0.1:1" in err and "could not join the Ray cluster" in err, err[-800:]
    assert took < 30, f"took {took:.0f} s"
    assert not (run.root / "shapes").exists()
    return f"exit 1 in {took:.1f} s naming 127.0.0.1:1, nothing written; " + complete(run)


def _driver_stopped(run: Run, stage: str, sig: int) -> str:
    """The driver is stopped while one shard is held mid-shape (ZEROVERSE_FAULTS hold) and the
    others are done: deterministic, unlike a signal at a random time."""
    run.fresh("empty" if stage == "generate" else "shapes")
    args = generate_args(run.root) if stage == "generate" else render_args(run.root)
    proc = run.spawn(*args, faults=f"{stage}:hold@3")
    directory = run.root / ("shapes" if stage == "generate" else "views")
    wait_for(lambda: (run.faults_dir / f"{stage}-hold-3-0").exists() and listed_count(directory) >= 2 or proc.poll() is not None,
             180, "two shards listed and the third held")  # fmt: skip
    assert proc.poll() is None, f"the driver ended early: {proc.communicate()[1][-800:]}"
    listed = listed_count(directory)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        # Say what the driver printed: a driver that never handled the signal prints nothing.
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the {stage} driver was still running 90 s after the signal; its stderr ends: {err[-1500:]!r}") from None
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "rerun the same command to resume" in err, f"exit {proc.returncode}: {err[-800:]}"
        assert "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    run.cleanup()  # reap the Ray processes the driver left
    assert listed_count(directory) == listed and not list(directory.glob(".tmp-*"))
    name = {signal.SIGINT: "Ctrl-C", signal.SIGKILL: "kill -9"}[sig]
    ending = "exit 130 with the resume hint" if sig == signal.SIGINT else "killed"
    return f"{name} with {listed}/3 shards listed: {ending}, no temporary file; " + complete(run)


def driver_ctrl_c_render(run: Run) -> str:
    return _driver_stopped(run, "render", signal.SIGINT)


def driver_ctrl_c_generate(run: Run) -> str:
    return _driver_stopped(run, "generate", signal.SIGINT)


def driver_kill9_generate(run: Run) -> str:
    return _driver_stopped(run, "generate", signal.SIGKILL)


def driver_kill9_render(run: Run) -> str:
    return _driver_stopped(run, "render", signal.SIGKILL)


def _node_killed(run: Run, stage: str) -> str:
    run.fresh("empty" if stage == "generate" else "shapes")
    env = _child_env()
    env.update(ZEROVERSE_FAULTS=f"{stage}:hold@3", ZEROVERSE_FAULTS_DIR=str(run.faults_dir))
    proc = subprocess.run([sys.executable, __file__, "node-kill", str(run.root), stage], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("NODE_KILL ")]
    assert proc.returncode == 0 and lines, f"node-kill driver failed: {proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
    out = json.loads(lines[-1].split(" ", 1)[1])
    assert out["removed"] and out["failures"] == 0, out
    return f"node holding shape 3 removed mid-{stage} ({out['detail']}), its work redone on the other node; " + complete(run)


def node_killed_render(run: Run) -> str:
    return _node_killed(run, "render")


def node_killed_generate(run: Run) -> str:
    return _node_killed(run, "generate")


CASES = [
    Case("gen-worker-kill9", "generate: kill -9 of the worker at shape 3", "Ray reruns the task; exit 0", gen_worker_killed),
    Case("gen-blender-crash", "generate: Blender segfault at shape 4, twice", "retried, built on the 3rd try; exit 0", gen_blender_crash_retried),
    Case("gen-crash-always", "generate: worker killed at shape 4 every time", "shard 4-5 ledgered; exit 1; validate names it", gen_crash_every_time_ledgered),
    Case("gen-shape-raises", "generate: shape 1 raises on every build", "shape 1 ledgered, its shard kept; exit 1", gen_shape_raises_ledgered),
    Case("gen-hang", "generate: Blender hangs (SIGSTOP) at shape 2, once", f"killed after {FAST_TIMEOUT:g} s silent, retried; exit 0", gen_hang_times_out),
    Case("gen-hang-always", "generate: Blender hangs at shape 2 every time", "timed out twice, shard 2-3 ledgered", gen_hang_every_time_ledgered, chaos=True),
    Case("gen-disk-full", "generate onto a 640 KB tmpfs", "exit 1 'No space left'; no partial shard; lost ones ledgered", gen_disk_full),
    Case("gen-manifest-unsavable", "generate: the manifest's rename fails (bind mount)", "exit 1, clear message, old manifest intact", gen_manifest_unsavable),
    Case("gen-config-refused", "generate again with --seed 8 / --shard-size 3", "refused naming it; root untouched", gen_config_change_refused),
    Case("gen-new-version", "generate --seed 8 --new-version on a finished root", "old version moved intact to versions/1", gen_config_change_new_version),
    Case("gen-truncated-output", "a listed shape shard truncated, generate rerun", "the shard is rebuilt byte-identically", gen_corrupt_output_rebuilt),
    Case("traversal-manifest", "a shapes manifest entry edited to '../../victim.txt'", "every command refuses the root naming entry and fix; nothing outside deleted", traversal_manifest_refused),
    Case("render-worker-kill9", "render: kill -9 of the worker at shape 3", "retried in a fresh worker; exit 0", render_worker_killed),
    Case("render-scratch-leak", "render: worker killed at shape 3, a dead worker's scratch left from before", "no zv-render-* scratch folder left", render_scratch_swept),
    Case("render-blender-crash", "render: Blender segfault at shape 2, twice", "retried, rendered on the 3rd try; exit 0", render_blender_crash_retried),
    Case("render-crash-always", "render: Blender segfault at shape 4 every time", "3 attempts, shard 4-5 ledgered; exit 1", render_crash_every_time_ledgered),
    Case("render-hang", "render: Blender hangs (SIGSTOP) at shape 3, once", f"killed after {FAST_TIMEOUT:g} s silent, retried; exit 0", render_hang_times_out, chaos=True),
    Case("render-hang-always", "render: Blender hangs at shape 0 every time", "timed out twice, shard 0-1 ledgered", render_hang_every_time_ledgered, chaos=True),
    Case("render-shape-raises", "render: shape 5 raises every time", "shape 5 ledgered, shape 4 written", render_shape_raises_ledgered),
    Case("render-disk-full", "render onto a full tmpfs", "'No space left' ledgered; no partial shard", render_disk_full),
    Case("render-manifest-unsavable", "render: the manifest's rename fails (bind mount)", "exit 1, clear message, old manifest intact", render_manifest_unsavable),
    Case("render-truncated-input", "render with a truncated input shape shard", "refused naming file and fix; validate names it", render_truncated_input_refused),
    Case("render-corrupt-skip", "render with a bit-flipped input shard, then --skip-corrupt", "refused; skipped + ledgered; --verify rebuilds", render_corrupt_input_skipped),
    Case("render-config-change", "render again with --resolution 48 (then --new-version)", "refused naming it; old views kept in versions/1", render_config_change),
    Case("bad-cli-values", f"{len(BAD_VALUES)} bad values (--n 0, --resolution 8, ...)", "each refused naming value and fix; root untouched", bad_cli_values),
    Case("unreachable-address", "generate --address 127.0.0.1:1", "exit 1 within seconds naming it", unreachable_address),
    # chaos (bench/chaos.py runs it; the default suite does not): in 3 of 4 full suites on the 2-core
    # box, the render driver ignored the SIGINT (still running 240 s later, nothing on stderr); alone
    # and in every subset it passed. The cause is not found yet.
    Case("ctrl-c-render", "Ctrl-C (SIGINT) to the render driver mid-run", "exit 130, resume hint; rerun completes", driver_ctrl_c_render, chaos=True),
    Case("ctrl-c-generate", "Ctrl-C (SIGINT) to the generate driver mid-run", "exit 130, resume hint; rerun completes", driver_ctrl_c_generate, chaos=True),
    Case("driver-kill9-generate", "kill -9 of the generate driver mid-run", "rerun completes", driver_kill9_generate, chaos=True),
    Case("driver-kill9-render", "kill -9 of the render driver mid-run", "rerun completes", driver_kill9_render, chaos=True),
    Case("node-kill-render", "a whole node removed mid-render (2-node cluster)", "its shard redone on the other node", node_killed_render, chaos=True),
    Case("node-kill-generate", "a whole node removed mid-generate (2-node cluster)", "Ray reruns its task elsewhere", node_killed_generate, chaos=True),
]


# ---- helper process: a 2-node cluster that loses the node holding shape 3 -----------------------------


def _node_kill_main(root: Path, stage: str) -> None:
    import threading

    import ray
    from ray.cluster_utils import Cluster

    from pipelines.generate import run_generate
    from pipelines.render import run_render

    # A head with no CPU (driver, GCS, progress) and two worker nodes of one CPU each.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    marker = Path(os.environ["ZEROVERSE_FAULTS_DIR"]) / f"{stage}-hold-3-0"
    out = {"removed": False, "detail": ""}

    def kill_the_holder() -> None:
        deadline = time.monotonic() + 180
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        holder = int(marker.read_text() or 0) if marker.exists() else 0
        for node in nodes:
            raylet = node.all_processes["raylet"][0].process.pid
            if holder and _is_descendant(holder, raylet):
                cluster.remove_node(node, allow_graceful=False)  # SIGKILL of the node's raylet and workers
                out.update(removed=True, detail=f"worker pid {holder} under raylet {raylet}")
                return
        out["detail"] = f"no node holds pid {holder}"

    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        killer = threading.Thread(target=kill_the_holder, daemon=True)
        killer.start()
        if stage == "generate":
            result = run_generate(generate_config(root), address=cluster.address, workers=2, progress=False)
        else:
            result = run_render(render_config(root), address=cluster.address, workers=2, progress=False)
        killer.join(timeout=5)
        out["failures"] = len(result.failures)
        out["reasons"] = sorted({f["reason"] for f in result.failures})
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("NODE_KILL " + json.dumps(out), flush=True)


def _is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ValueError, IndexError):
            return False
    return False


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "node-kill":
        _node_kill_main(Path(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(__doc__)
