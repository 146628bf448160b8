"""Binding a Blender worker process to one GPU: THE single place where the mechanism lives.

Measured on nvidia-h200-x2 (2026-11-30): a Blender process started with CUDA_VISIBLE_DEVICES=1
still rendered EEVEE on GPU 0. EEVEE draws through EGL (or Vulkan), whose device enumeration
does not follow CUDA's variable, so every worker of a node lands on GPU 0 until a real binding
replaces the placeholder below. Two hooks, both called by every render worker:

- `bind_render_device(index)`: in the worker process BEFORE bpy is imported (pipelines.render's
  ViewShardWriter calls it first thing): environment variables read when Blender creates its
  GPU context belong here (an EGL device index for a shim, the Vulkan device, ...).
- `configure_render_device(index, engine)`: after bpy is imported and the scene is set up
  (BlenderRenderer calls it): user preferences (e.g. Cycles' device list) belong here.

This module must not import bpy at import time.
"""

from __future__ import annotations

import os
import sys


def bind_render_device(index: int | None) -> str:
    """Binds this process to physical GPU `index` (zeroverse.gpu_devices) before bpy loads;
    None: no GPU (Cycles on the CPU). Returns a short description for the shard metadata."""
    if index is None:
        return "none"
    late = "bpy" in sys.modules  # too late for anything read when Blender starts its GPU context
    # PLACEHOLDER mechanism: CUDA_VISIBLE_DEVICES binds Cycles (CUDA/OptiX) and anything CUDA-based,
    # but not EEVEE (see the module docstring). Plug the real binding in here.
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    return f"CUDA_VISIBLE_DEVICES={index}" + (" (set after bpy was imported)" if late else "")


def configure_render_device(index: int | None, engine: str) -> None:
    """Binds after bpy is imported (preferences, scene settings), for mechanisms that cannot act
    through the environment. Nothing yet: Cycles renders on the CPU in this project (see
    blender_scripts/render_views.py) and EEVEE has no per-device preference in Blender 5.0."""
    del index, engine
