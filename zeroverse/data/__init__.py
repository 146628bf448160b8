"""View shards as PyTorch datasets (imports torch; `import zeroverse` does not import this).

- `ViewDataset`: map-style, one item per shape (DataLoader shuffling, DistributedSampler).
- `ViewStream`: iterable, seeded shard-aware shuffle, split over ranks and workers, resumable.
- `collate`: stacks items into [B, V, ...] batches.
- `plucker_rays`: per-pixel (d, o x d) ray embedding [..., 6, H, W].
"""

from .config import ViewConfig
from .dataset import ShardReadError, ViewDataset, collate
from .rays import plucker_rays
from .stream import ViewStream

__all__ = ["ViewDataset", "ViewStream", "plucker_rays", "collate", "ViewConfig", "ShardReadError"]
