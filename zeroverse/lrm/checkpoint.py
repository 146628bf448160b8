"""Checkpoint files: atomic writes, `weights_only=True` loads.

A training checkpoint is a dict of tensors and plain Python values only (configs stored as
dicts of str/int/float/bool/lists), so `torch.load(..., weights_only=True)` reads it without
unpickling arbitrary objects:

    {"step": int, "model": state_dict, "optimizer": ..., "scheduler": ..., "rng": {...},
     "model_config": GSLRMConfig.to_dict(), "train_config": {...}, "zeroverse_version": str}

Files are written to a temporary name beside the target, fsynced, then renamed over it, so a
crash never leaves a truncated checkpoint under the final name.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """torch.save `state` to `path` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def save_training_checkpoint(state: dict[str, Any], out_dir: str | Path, step: int) -> Path:
    """Write `ckpt-<step>.pt` and point `latest.pt` at it (a hard link when the filesystem
    allows, else a copy; both replaced atomically)."""
    out_dir = Path(out_dir)
    ckpt = save_checkpoint(state, out_dir / f"ckpt-{step}.pt")
    latest = out_dir / "latest.pt"
    tmp = out_dir / f".latest.pt.{os.getpid()}.tmp"
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(ckpt, tmp)  # no second write of a multi-GB file
    except OSError:
        shutil.copyfile(ckpt, tmp)
    os.replace(tmp, latest)
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer may touch, as tensors and plain lists (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Build a GSLRM from a training checkpoint: returns (model in eval mode, GSLRMConfig)."""
    from .gslrm import GSLRM, GSLRMConfig

    ckpt = load_checkpoint(path, map_location)
    cfg = GSLRMConfig.from_dict(ckpt["model_config"])  # raises on keys this version lacks
    model = GSLRM(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def load_model_with_info(path: str | Path, map_location: str | torch.device = "cpu"):
    """load_model plus the checkpoint's plain values, from one read of the file (training
    checkpoints also hold the optimizer state, so reading them twice is not free).

    Returns (model in eval mode, GSLRMConfig, info) with info = {"step": int | None,
    "train_config": dict | None, "zeroverse_version": str | None}.
    """
    from .gslrm import GSLRM, GSLRMConfig

    ckpt = load_checkpoint(path, map_location)
    cfg = GSLRMConfig.from_dict(ckpt["model_config"])  # raises on keys this version lacks
    model = GSLRM(cfg)
    model.load_state_dict(ckpt["model"])
    step = ckpt.get("step")
    info = {
        "step": None if step is None else int(step),
        "train_config": ckpt.get("train_config"),
        "zeroverse_version": ckpt.get("zeroverse_version"),
    }
    return model.eval(), cfg, info
