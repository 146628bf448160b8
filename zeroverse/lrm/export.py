"""Predict a shape's Gaussians with a GS-LRM checkpoint and write them as a 3DGS .ply
(`zeroverse export-ply`).

    export_ply_from_checkpoint(checkpoint, views_root, 0, "shape0.ply")
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .evaluate import check_resolution, eval_rig_error, load_for_eval, object_names, scan_views
from .gslrm import GSLRM, Gaussians
from .ply import export_ply


@dataclass
class PlyExport:
    path: Path
    shape_id: int
    name: str
    num_gaussians: int
    view_sampling: str  # "eval" (the 4 eval-rig inputs) or "random" (seeded random views)
    view_ids: list[int]


def predict_gaussians(
    model: GSLRM,
    images: Tensor,  # [B, V, 3, H, W] in [0, 1]
    c2w: Tensor,  # [B, V, 4, 4]
    K: Tensor,  # [B, V, 3, 3]
) -> Gaussians:
    """The model's Gaussians [B, V*H*W] in float32 (bf16 autocast on CUDA only)."""
    dev = next(model.parameters()).device
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    with torch.no_grad(), amp:
        g = model(images.to(dev), c2w.to(dev), K.to(dev))
    return g.to(dtype=torch.float32)


def export_ply_from_checkpoint(
    checkpoint: str | os.PathLike,
    views_root: str | os.PathLike,
    shape_index: int,
    out_path: str | os.PathLike,
    num_input_views: int = 4,
    view_sampling: str = "auto",
    resolution: int | None = None,
    device: str = "auto",
) -> PlyExport:
    """Predicts the Gaussians of item `shape_index` (position in the root's sorted shape ids) and
    writes them as a standard 3DGS .ply: num_input_views x H x W Gaussians (no pruning).

    view_sampling: "eval" (the eval rig's input views), "random" (seeded random views, seed 0;
    any rig) or "auto" (eval when the root was rendered with the eval rig).
    """
    from zeroverse.data import ViewDataset

    if view_sampling not in ("auto", "eval", "random"):
        raise ValueError(f"view_sampling={view_sampling!r}: use 'auto', 'eval' or 'random'")
    if isinstance(num_input_views, bool) or not isinstance(num_input_views, (int, np.integer)) or num_input_views < 1:
        raise ValueError(f"num_input_views={num_input_views!r}: use an integer >= 1")
    loaded = load_for_eval(checkpoint, device)
    scan = scan_views(views_root)
    if view_sampling == "auto":
        view_sampling = "eval" if scan.has_eval_rig else "random"
    if view_sampling == "eval" and not scan.has_eval_rig:
        raise eval_rig_error(scan)
    res = loaded.cfg.image_size if resolution is None else resolution
    check_resolution(res, loaded.cfg, scan.sizes, scan.views_dir)
    dataset = ViewDataset(scan.views_dir, num_input_views=num_input_views, num_target_views=0, resolution=res,
                          channels=("rgb",), background="white", view_sampling=view_sampling)
    if isinstance(shape_index, bool) or not isinstance(shape_index, (int, np.integer)) or not 0 <= shape_index < len(dataset):
        raise ValueError(
            f"shape_index={shape_index!r}: {scan.views_dir} holds {len(dataset)} shapes; use 0..{len(dataset) - 1} "
            f"(shape ids {dataset.shape_ids[0]}..{dataset.shape_ids[-1]})"
        )
    item = dataset[int(shape_index)]
    g = predict_gaussians(loaded.model, item["images"][None], item["c2w"][None], item["K"][None])
    sid = int(item["shape_id"])
    path = export_ply(g[0], out_path)
    return PlyExport(path=Path(path), shape_id=sid, name=object_names(scan.manifest, [sid])[sid], num_gaussians=g.num,
                     view_sampling=view_sampling, view_ids=item["view_ids"].tolist())


__all__ = ["PlyExport", "export_ply_from_checkpoint", "predict_gaussians"]
