"""Every script in bench/ runs at toy size, so a benchmark can never break silently again (the
README's render command once failed with a KeyError for months of commits).

Each test runs the script as a user would (a subprocess, from the repository root) with its
smallest options and checks that it exits 0 and prints its table. Figures at toy size mean
nothing; only that the script works is checked. Scripts that need CUDA run their CPU mode or
say why they skip.
"""

from __future__ import annotations

import json
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
