"""What a view item holds (ViewConfig) and the names it uses: shared by ViewDataset,
ViewStream and the GPU-resident views, checked once when a dataset is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# channel name -> item key; the keys themselves are accepted as aliases.
CHANNEL_KEYS = {"rgb": "images", "alpha": "alphas", "depth": "depths", "normal": "normals", "position": "positions"}
CHANNEL_DIMS = {"rgb": 3, "alpha": 1, "depth": 1, "normal": 3, "position": 3}
CHANNEL_ALIASES = {**{k: k for k in CHANNEL_KEYS}, **{v: k for k, v in CHANNEL_KEYS.items()}, "normals": "normal"}
# random: V distinct views per (seed, epoch, shape); eval: the eval rig's inputs and targets;
# mixed: like random, but a `layout_share` of the samples take as inputs the views the random
# rig rendered in the evaluation layout (role "layout", RigConfig.layout_views).
VIEW_SAMPLINGS = ("random", "eval", "mixed")
BACKGROUNDS = {"white": 1.0, "black": 0.0}


@dataclass(frozen=True)
class ViewConfig:
    """What an item holds; shared by ViewDataset and ViewStream."""

    num_input_views: int = 4
    num_target_views: int = 4
    resolution: tuple[int, int] | None = None  # (H, W); None keeps the stored size
    channels: tuple[str, ...] = ("rgb", "alpha", "depth")
    background: str | float | tuple[float, float, float] = "white"
    view_sampling: str = "random"
    seed: int = 0
    skip_bad: bool = False
    layout_share: float = 0.0  # view_sampling="mixed": share of samples with layout inputs

    @classmethod
    def make(
        cls,
        num_input_views: int,
        num_target_views: int,
        resolution: int | Sequence[int] | None,
        channels: Sequence[str],
        background: str | float | Sequence[float],
        view_sampling: str,
        seed: int,
        skip_bad: bool,
        layout_share: float = 0.0,
    ) -> "ViewConfig":
        for name, value in (("num_input_views", num_input_views), ("num_target_views", num_target_views)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}={value!r}: use a non-negative integer")
        if num_input_views + num_target_views < 1:
            raise ValueError("num_input_views + num_target_views is 0: ask for at least one view")
        if resolution is not None:
            res = (resolution, resolution) if isinstance(resolution, (int, np.integer)) else tuple(resolution)
            if len(res) != 2 or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in res):
                raise ValueError(f"resolution={resolution!r}: use a positive int (square) or (height, width)")
            resolution = (int(res[0]), int(res[1]))
        if isinstance(channels, str):
            channels = (channels,)
        canonical = []
        for channel in channels:
            if channel not in CHANNEL_ALIASES:
                raise ValueError(f"unknown channel {channel!r}; choose from {sorted(CHANNEL_KEYS)}")
            if CHANNEL_ALIASES[channel] not in canonical:
                canonical.append(CHANNEL_ALIASES[channel])
        if not canonical:
            raise ValueError("channels is empty; ask for at least one of " + ", ".join(CHANNEL_KEYS))
        if isinstance(background, str):
            if background not in (*BACKGROUNDS, "random"):
                raise ValueError(f"background={background!r}: use 'white', 'black', 'random' or a grey level in [0, 1]")
        else:
            values = np.broadcast_to(np.asarray(background, dtype=np.float64), (3,)) if np.ndim(background) <= 1 else None
            if values is None or not np.all((values >= 0) & (values <= 1)):
                raise ValueError(f"background={background!r}: use 'white', 'black', 'random', a float or 3 floats in [0, 1]")
            background = float(values[0]) if np.ndim(background) == 0 else tuple(float(v) for v in values)
        if view_sampling not in VIEW_SAMPLINGS:
            raise ValueError(f"view_sampling={view_sampling!r}: use one of {VIEW_SAMPLINGS}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r}: use a non-negative integer")
        if not 0.0 <= float(layout_share) <= 1.0:
            raise ValueError(f"layout_share={layout_share!r}: use a share in [0, 1]")
        return cls(int(num_input_views), int(num_target_views), resolution, tuple(canonical), background,
                   view_sampling, int(seed), bool(skip_bad), float(layout_share))

    @property
    def num_views(self) -> int:
        return self.num_input_views + self.num_target_views
