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
import re
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
    """The checkpoint dict at `path`. FileNotFoundError if there is no such file; ValueError,
    saying what is wrong with the file, if it is not a checkpoint torch can read weights-only."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"checkpoint {path} {what}; pass a latest.pt or ckpt-<step>.pt that `zeroverse train-lrm` wrote in its run folder"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, KeyError, EOFError ...
        raise ValueError(f"checkpoint {path} cannot be read: {_what_is_wrong(path, err)}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not the dict `zeroverse train-lrm` writes")
    return state


def _what_is_wrong(path: Path, err: Exception) -> str:
    """Why torch.load refused `path`, in words: not a torch file, truncated, or foreign objects."""
    import pickle

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # a zip archive (torch >= 1.6), or a legacy pickle
        return (f"it is not a file torch.save wrote (those are zip archives; this one is {size} bytes "
                f"starting with {head!r}); pass a latest.pt or ckpt-<step>.pt that `zeroverse train-lrm` wrote")
    text = " ".join(str(err).split())
    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        return (f"it holds Python objects beyond tensors and plain values, which are never unpickled "
                f"({'e.g. ' + found.group(1) if found else text[:200]}); only checkpoints of `zeroverse train-lrm` load")
    return f"it is damaged or truncated ({size} bytes; {type(err).__name__}: {text.split('. ')[0][:200]})"


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
