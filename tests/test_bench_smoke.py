"""Every script in bench/ runs at toy size, so a benchmark can never break silently again (the
README's render command once failed with a KeyError for months of commits).

Each test runs the script as a user would (a subprocess, from the repository root) with its
smallest options and checks that it exits 0 and prints its table. Figures at toy size mean
nothing; only that the script works is checked. Scripts that need CUDA run their CPU mode or
say why they skip.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(args: list[str], timeout: float = 240, env: dict[str, str] | None = None) -> str:
    """Runs `python bench/...` from the repository root; returns stdout + stderr, fails with them."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


@pytest.mark.blender
def test_render_bench_runs_the_readme_command_at_toy_size(tmp_path):
    out = run_bench(["bench/render.py", "--shapes", "2", "--resolution", "32", "--views", "2", "--samples", "1",
                     "--shards-per-proc", "1", "--shapes-per-shard", "1"])  # fmt: skip
    assert "views/s" in out and "core-s/view" in out


@pytest.mark.blender
def test_generate_bench():
    out = run_bench(["bench/generate.py", "--n", "3", "--shard-shapes", "3"])
    assert "shapes/s per core" in out and "3-shape shard incl. write" in out


def test_textures_bench():
    out = run_bench(["bench/textures.py", "--n", "4", "--resolution", "32"])
    assert "ms" in out


def test_loader_bench():
    pytest.importorskip("torch")
    out = run_bench(["bench/loader.py", "--resolutions", "32", "--shapes", "2", "--views-per-shape", "4", "--views", "2",
                     "--items", "4", "--batch", "2", "--workers", "0"])  # fmt: skip
    assert "views/s" in out


def test_plot_curve_bench(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "psnr": 10 + s / 10, "loss": 1 / (s + 1)}) + "\n" for s in range(0, 50, 5)))
    run_bench(["bench/plot_curve.py", str(metrics), str(tmp_path / "curve.png"), "psnr"])
    from PIL import Image

    assert Image.open(tmp_path / "curve.png").size == (720, 360)


def test_rasterizer_check_bench_runs_or_says_why_not():
    """It compares gsplat with the pure-PyTorch rasterizer, so it needs CUDA and gsplat; without
    them it must exit 0 naming what is missing (checked here), with them a tiny comparison runs."""
    torch = pytest.importorskip("torch")
    out = run_bench(["bench/rasterizer_check.py", "--scenes", "1", "--batch", "1", "--gaussians", "50", "--cameras", "1", "--size", "16"])
    from zeroverse.lrm.rasterizer import gsplat_available

    if not torch.cuda.is_available() or not gsplat_available():
        assert "gsplat backend unavailable" in out and ("CUDA is not available" in out or "gsplat is not installed" in out)


def test_train_bench_cpu_mode(tmp_path):
    """CPU: the tiny preset at 32² (the script's own CPU defaults), one timed step."""
    pytest.importorskip("torch")
    out = run_bench(["bench/train.py", "--steps", "1", "--warmup", "1", "--json", str(tmp_path / "train.json")])
    assert (tmp_path / "train.json").exists(), out


def test_g3r_bench_cpu_mode(tmp_path):
    """CPU: a synthetic root and a G3R trained for a few iterations (the script's CPU mode)."""
    pytest.importorskip("torch")
    out = run_bench(["bench/g3r.py", "--shapes", "1", "--source-views", "2", "--heldout-views", "1", "--image-size", "16",
                     "--adam-steps", "2", "--train-steps", "2", "--json", str(tmp_path / "g3r.json")])  # fmt: skip
    assert (tmp_path / "g3r.json").exists(), out


@pytest.mark.ray
@pytest.mark.blender
def test_chaos_bench_one_case():
    """The fault matrix's table for one quick case (the whole matrix is `make chaos`)."""
    out = run_bench(["bench/chaos.py", "--cases", "unreachable-address"], timeout=600)
    assert "| unreachable-address |" in out and "1/1 cases as expected" in out


@pytest.mark.blender
def test_gpu_experiment_data_phase_toy_mode(tmp_path):
    """The GPU experiment's data phase in its documented local rehearsal, at toy size and with
    Cycles (EEVEE needs a GPU)."""
    env = {"PY311": sys.executable, "PY312": sys.executable, "N": "4", "VIEWS": "2", "RES": "32", "PRESET": "tiny",
           "PROCS": "2", "ENGINE": "cycles", "W": str(tmp_path / "w"), "OUT": str(tmp_path / "out")}  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run(["bash", "bench/gpu_experiment.sh", "data"], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "data: 4 shapes x 2 views" in (tmp_path / "out" / "data.txt").read_text()


@pytest.mark.blender
def test_gpu_experiment_render_phase_toy_mode(tmp_path):
    """The GPU render measurement (local pool end to end, JSON per resolution) rehearsed on the
    CPU: Cycles, 4 shapes x 2 views at 32², no nvidia-smi."""
    env = {"PY311": sys.executable, "PY312": sys.executable, "ENGINE": "cycles", "RN": "4", "RVIEWS": "2", "RPROCS": "2",
           "RRES": "32", "GPUS": "0", "W": str(tmp_path / "w"), "OUT": str(tmp_path / "out")}  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run(["bash", "bench/gpu_experiment.sh", "render"], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads((tmp_path / "out" / "render_32_gpus0_p2.json").read_text())
    assert report["views"] == 8 and report["gpus"] == "0" and "render" in report["stages_ms"]


def test_gpu_onehold_every_phase_toy_mode(tmp_path):
    # The one-hold GS-LRM experiment end to end at toy size (CPU, Cycles, tiny preset): data in the
    # background, training + two ablation rows + evaluation, then the summary and its JSON.
    # The real scanned objects (shared/evaldata/gso25, CC BY 4.0, beside the checkout), as tests/test_lrm_eval.py finds them.
    gso = next((p for p in (REPO.parent / "shared" / "evaldata" / "gso25", Path("/work/shared/evaldata/gso25")) if p.is_dir()), None)
    if gso is None:
        pytest.skip("shared/evaldata/gso25 is not beside this checkout")
    env = {**os.environ, "TOY": "1", "W": str(tmp_path / "w"), "N": "4", "HELDOUT": "1", "GSO": str(gso), "GSO_LIMIT": "1",
           "MAIN_MIN": "0.05", "ABL_STEPS": "2", "ABL_ROWS": "a0_v1,a5_layout", "WAIT": "280"}
    for phase in ("data", "wait", "train", "wait", "results"):
        proc = subprocess.run(["bash", "bench/gpu_onehold.sh", phase], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{phase}: {(proc.stdout + proc.stderr)[-3000:]}"
        if phase == "wait":
            assert "background work done" in proc.stdout, proc.stdout[-2000:]
    result = json.loads((tmp_path / "w" / "results" / "gslrm_onehold.json").read_text())
    assert result["gso25_psnr"] is not None and result["heldout_psnr"] is not None and result["steps"] >= 1
    assert [r["name"] for r in result["ablation"]] == ["a0_v1", "a5_layout"]
    assert (tmp_path / "w" / "out" / "onehold.tgz").stat().st_size > 0


@pytest.mark.blender
def test_eevee_ablation_bench_cycles_mode(tmp_path):
    """The EEVEE knobs are skipped on a CPU (reported as such); the variant machinery, the
    barriers and the PSNR against each process's baseline images still run."""
    out_json = tmp_path / "ablation.json"
    out = run_bench(["bench/eevee_ablation.py", "--engine", "cycles", "--shapes", "2", "--procs", "2", "--views", "2",
                     "--resolution", "32", "--samples", "1", "--variants", "baseline,samples_8,opaque_film,same_shape",
                     "--json", str(out_json)])  # fmt: skip
    assert "views/s" in out
    rows = {r["variant"]: r for r in json.loads(out_json.read_text())["variants"]}
    assert rows["samples_8"]["skipped"] == ["eevee.taa_render_samples"]
    assert rows["samples_8"]["psnr_vs_baseline_db"] == float("inf")  # nothing changed: the same pixels
    assert rows["opaque_film"]["psnr_vs_baseline_db"] < 30  # the background became opaque


@pytest.mark.blender
def test_eevee_ablation_scene_variants_run_and_the_animation_matches_single_renders(tmp_path):
    """The variants that change the scene rather than a setting (an empty frame, a farther
    camera, a box, a fixed camera, another shader, one animation render per shape, another
    resolution) all render; frame 1 of the animation is view 0 of the farm's own loop, pixel for
    pixel; --gpu-backend goes through Blender's preferences without breaking the render."""
    out_json = tmp_path / "ablation.json"
    variants = "baseline,empty_frame,far_camera_2x,cube,fixed_camera,emission,animation,res_256"
    out = run_bench(["bench/eevee_ablation.py", "--engine", "cycles", "--shapes", "2", "--procs", "2", "--views", "2",
                     "--resolution", "32", "--samples", "1", "--variants", variants, "--gpu-backend", "OPENGL",
                     "--json", str(out_json)])  # fmt: skip
    assert "views/s" in out
    rows = {r["variant"]: r for r in json.loads(out_json.read_text())["variants"]}
    assert list(rows) == variants.split(",")
    assert all(r["views"] == 4 for r in rows.values())  # 2 shapes x 2 views in every variant
    assert rows["animation"]["psnr_vs_baseline_db"] == float("inf")
    assert math.isnan(rows["res_256"]["psnr_vs_baseline_db"])  # another size: not compared
    assert rows["baseline"]["device"]["engine"] == "cycles"
