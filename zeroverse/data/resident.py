"""A ViewDataset decoded once into (GPU) memory, batches gathered there.

A GS-LRM step on an H200 takes a few milliseconds at 128²; decoding a batch's PNGs takes longer
on the CPU than the step on the GPU, so a fast trainer would wait on its DataLoader. When the
decoded set fits in GPU memory (1,000 shapes x 8 views at 256² is 4.2 GB as RGBA8 + float32
depth; an H200 has 139 GB), `ResidentViews` decodes every view once (DataLoader workers, with a
progress bar) and then builds each batch with a handful of gathers on the device.

Batches follow the dataset's own contract and choices: the views of shape i in epoch e are
chosen by the same `ViewReader.choose_rows` seeded by (seed, e, shape_id), composited on the
same background and resized with the same functions, so a run gets the same batches whether it
reads through a DataLoader or from here (tests/test_lrm_recipe.py checks it).

Example:
    >>> ds = ViewDataset(root, num_input_views=4, num_target_views=4, resolution=256)
    >>> views = ResidentViews(ds, device="cuda")
    >>> batch = views.batch([(0, 5), (0, 17)])   # (epoch, index) keys -> collated batch on cuda
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .config import CHANNEL_KEYS
from .dataset import ViewDataset
from .decode import (
    decode_depth,
    decode_rgba,
    intrinsics_matrix,
    resize_geometry,
    resize_rgba,
    scale_intrinsics,
)

BYTES_PER_PIXEL = 4 + 4  # RGBA8 + float32 depth


@dataclass(frozen=True)
class _ShapeRows:
    """Row-level facts of one shape that `choose_rows` needs, and where its views start."""

    start: int  # index of its first row in the resident arrays
    views: np.ndarray  # view numbers, in row order
    roles: list[str]
    projections: list[str]


class _DecodeShapes(Dataset):
    """Every row of a shape decoded (for the loading DataLoader's workers)."""

    def __init__(self, dataset: ViewDataset, with_depth: bool):
        self.dataset, self.with_depth = dataset, with_depth

    def __len__(self) -> int:
        return len(self.dataset.entries)

    def __getitem__(self, i: int) -> dict:
        entry = self.dataset.entries[i]
        table = self.dataset.reader.read_table(entry)
        H = table.column("height").to_numpy()
        W = table.column("width").to_numpy()
        rgba, depth = [], []
        for r in range(table.num_rows):
            cell = table.column("rgba")[r]
            rgba.append(decode_rgba(cell.as_buffer()))
            if self.with_depth:
                depth.append(decode_depth(table.column("depth")[r].as_buffer(), int(H[r]), int(W[r])))
        intr = np.asarray(table.column("intrinsics").to_pylist(), np.float32)
        return {
            "rgba": np.stack(rgba),  # [R, H, W, 4] uint8
            "depth": np.stack(depth) if depth else None,  # [R, H, W] float32
            "c2w": np.asarray(table.column("c2w").to_pylist(), np.float32).reshape(-1, 4, 4),
            "K": intrinsics_matrix(intr),  # [R, 3, 3] at the stored size
            "views": table.column("view").to_numpy(),
            "roles": table.column("role").to_pylist(),
            "projections": table.column("projection").to_pylist(),
            "size": (int(H[0]), int(W[0])),
            "sizes": set(zip(H.tolist(), W.tolist())),
        }


def resident_bytes(dataset: ViewDataset) -> int:
    """Memory the resident copy of `dataset` would take, from the shards' footers alone."""
    H, W = stored_size(dataset)
    return sum(e.num_rows for e in dataset.entries) * H * W * BYTES_PER_PIXEL


def stored_size(dataset: ViewDataset) -> tuple[int, int]:
    """(H, W) of the views as stored (the dataset's first shape), from the shard alone."""
    import pyarrow.parquet as pq

    entry = dataset.entries[0]
    t = pq.ParquetFile(entry.path).read_row_group(entry.row_group, columns=["height", "width"])
    return int(t.column("height")[0].as_py()), int(t.column("width")[0].as_py())


class ResidentViews:
    """See the module docstring. `device` holds the views; batches come back on it."""

    def __init__(self, dataset: ViewDataset, device: str | torch.device = "cpu", num_workers: int = 4,
                 progress: bool = True):
        cfg = dataset.config
        unsupported = set(cfg.channels) - {"rgb", "alpha", "depth"}
        if unsupported:
            raise ValueError(f"ResidentViews holds rgb, alpha and depth only; drop {sorted(unsupported)} from channels")
        self.dataset, self.config, self.device = dataset, cfg, torch.device(device)
        self.with_depth = "depth" in cfg.channels
        loader = DataLoader(_DecodeShapes(dataset, self.with_depth), batch_size=None, num_workers=num_workers,
                            collate_fn=lambda x: x)
        rgba, depth, c2w, K, shapes, start, size = [], [], [], [], [], 0, None
        from tqdm.auto import tqdm

        for item in tqdm(loader, total=len(dataset.entries), desc="decoding views", disable=not progress,
                         dynamic_ncols=True):
            if len(item["sizes"]) > 1 or (size is not None and item["size"] != size):
                raise ValueError(
                    f"{dataset.views_dir}: views of several sizes {sorted(item['sizes'] | {size})}; ResidentViews "
                    "needs one stored size (read this root through the DataLoader instead)"
                )
            size = item["size"]
            n = len(item["views"])
            shapes.append(_ShapeRows(start, item["views"], item["roles"], item["projections"]))
            start += n
            rgba.append(torch.from_numpy(item["rgba"]).to(self.device))
            if self.with_depth:
                depth.append(torch.from_numpy(item["depth"]).to(self.device))
            c2w.append(torch.from_numpy(item["c2w"]))
            K.append(torch.from_numpy(item["K"]))
        self.stored_size: tuple[int, int] = size
        self.rgba = torch.cat(rgba)  # [R, H, W, 4] uint8, every row of every shape
        self.depth = torch.cat(depth) if self.with_depth else None  # [R, H, W] float32
        self.c2w = torch.cat(c2w).to(self.device)  # [R, 4, 4]
        self.K = torch.cat(K).to(self.device)  # [R, 3, 3] at the stored size
        self.shapes = shapes

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return self.rgba.numel() + (self.depth.numel() * 4 if self.depth is not None else 0)

    def rows(self, epoch: int, index: int) -> list[int]:
        """Global row indices of item (epoch, index): the dataset's own choice of views."""
        shape = self.shapes[index]
        entry = self.dataset.entries[index]
        local = self.dataset.reader.choose_rows(entry, shape.views, shape.roles, shape.projections, epoch)
        return [shape.start + r for r in local]

    def batch(self, keys: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """The collated batch of items (epoch, index), on `device`."""
        cfg = self.config
        rows = [self.rows(e, i) for e, i in keys]
        B, V = len(rows), len(rows[0])
        H, W = self.stored_size
        h, w = cfg.resolution or (H, W)
        bg = torch.stack([self.dataset.reader.background(e, self.dataset.entries[i].shape_id) for e, i in keys])
        # Host -> device through pinned memory, asynchronously: a pageable copy would wait for
        # the GPU to finish the previous step (a host sync per batch).
        flat = _to(torch.tensor([r for rs in rows for r in rs], dtype=torch.long), self.device)
        bg_rows = _to(bg, self.device).repeat_interleave(V, dim=0).view(-1, 3, 1, 1)  # [B*V, 3, 1, 1]
        x = self.rgba[flat]  # [B*V, H, W, 4] uint8
        out: dict[str, Tensor] = {}
        if (h, w) == (H, W):
            # The dataset's fast path, batched: image = bg + (rgb - bg) * alpha.
            alpha = x[..., 3].to(torch.float32).div_(255.0)[:, None]
            image = torch.sub(x[..., :3].permute(0, 3, 1, 2).to(torch.float32).div_(255.0), bg_rows)
            image.mul_(alpha).add_(bg_rows)
        else:
            premult, alpha = resize_rgba(x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0), (h, w))
            # decode.composite with one background per view (same arithmetic).
            image = (premult + bg_rows * (1.0 - alpha)).clamp_(0.0, 1.0)
        if "rgb" in cfg.channels:
            out[CHANNEL_KEYS["rgb"]] = image.reshape(B, V, 3, h, w)
        if "alpha" in cfg.channels:
            out[CHANNEL_KEYS["alpha"]] = alpha.reshape(B, V, 1, h, w)
        if self.with_depth:
            depth = self.depth[flat][:, None]
            if (h, w) != (H, W):
                depth, _ = resize_geometry(depth, (h, w), {})
            out[CHANNEL_KEYS["depth"]] = depth.reshape(B, V, 1, h, w)
        out["c2w"] = self.c2w[flat].reshape(B, V, 4, 4)
        out["K"] = scale_intrinsics(self.K[flat], w / W, h / H).reshape(B, V, 3, 3)
        out["shape_id"] = torch.tensor([self.dataset.entries[i].shape_id for _, i in keys], dtype=torch.int64)
        out["view_ids"] = torch.from_numpy(
            np.asarray([[int(self.shapes[i].views[r - self.shapes[i].start]) for r in rs] for (_, i), rs in zip(keys, rows)],
                       np.int64))
        out["background"] = bg
        return out


def _to(t: Tensor, device: torch.device) -> Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


__all__ = ["ResidentViews", "resident_bytes", "stored_size"]
