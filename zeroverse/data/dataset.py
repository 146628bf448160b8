"""`ViewDataset`: view shards as a map-style PyTorch dataset, one item per shape.

Reading follows the shard contract (docs/architecture.md): the manifest `ROOT/views/manifest.json`
is the only list of shards a reader trusts; each shard holds one Parquet row group per shape and
one row per view. An item reads exactly one row group, only the columns its channels need, and
decodes only the chosen views' cells (Parquet cannot read part of a column chunk, so the other
views' bytes are read but never decoded; decoding is what costs: ~5 ms per 512² PNG).

Item (V = num_input_views + num_target_views; the first num_input_views are the inputs):
    images     float32 [V, 3, H, W]  sRGB in [0, 1], composited on the background  ("rgb")
    alphas     float32 [V, 1, H, W]  coverage in [0, 1]                            ("alpha")
    depths     float32 [V, 1, H, W]  planar z in world units, 0 = empty            ("depth")
    normals    float32 [V, 3, H, W]  world space, unit, 0 = empty                  ("normal")
    positions  float32 [V, 3, H, W]  world xyz, 0 = empty                          ("position")
    c2w        float32 [V, 4, 4]     OpenCV camera-to-world
    K          float32 [V, 3, 3]     pixels, centres at +0.5, matching H, W after any resize
    shape_id   int64   []            the shape's global id
    view_ids   int64   [V]           the `view` column of the chosen rows
    background float32 [3]           the colour the images were composited on

Example:
    >>> ds = ViewDataset("runs/zv", num_input_views=4, num_target_views=4, resolution=256)
    >>> loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=8, collate_fn=collate,
    ...                     persistent_workers=True, pin_memory=True)
    >>> for epoch in range(epochs):
    ...     ds.set_epoch(epoch)            # new views per shape each epoch (reaches live workers)
    ...     for batch in loader: ...       # batch["images"]: [8, 8, 3, 256, 256]

Under DDP use `DistributedSampler(ds)` and call both `sampler.set_epoch(e)` and `ds.set_epoch(e)`.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from zeroverse.store.manifest import Manifest
from zeroverse.store.shards import MANIFEST_NAME

from .config import BACKGROUNDS, CHANNEL_DIMS, CHANNEL_KEYS, ViewConfig
from .decode import (
    composite,
    decode_depth,
    decode_normal,
    decode_position,
    decode_rgba,
    intrinsics_matrix,
    resize_geometry,
    resize_rgba,
    scale_intrinsics,
)

# Columns every item reads: small next to the image cells.
_CAMERA_COLUMNS = ["shape_id", "view", "role", "projection", "width", "height", "c2w", "intrinsics"]
# Open Parquet files kept per process; a shuffled epoch touches shards in random order, and each
# handle holds a file descriptor and the parsed footer.
MAX_OPEN_FILES = 32


class ShardReadError(ValueError):
    """A shape's data cannot be used (damaged file, too few views, missing cells). `skip_bad`
    skips these; configuration mistakes stay plain ValueErrors."""


@dataclass(frozen=True)
class ShapeEntry:
    """Where a shape lives: resolved once from the manifest and the shards' footers."""

    shape_id: int
    path: str
    row_group: int
    num_rows: int


def resolve_views_dir(root: str | os.PathLike) -> tuple[Path, Manifest]:
    """ROOT (holding views/manifest.json) or ROOT/views itself -> (views dir, its manifest)."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root} does not exist; pass the --root a `zeroverse render` run wrote to")
    for candidate in (root / "views", root):
        if (candidate / MANIFEST_NAME).is_file():
            manifest = Manifest.load(candidate)
            if manifest.kind != "views":
                raise ValueError(f"{candidate / MANIFEST_NAME} lists {manifest.kind!r} shards, not views; pass the root that holds views/")
            if not manifest.shards:
                raise ValueError(f"{candidate / MANIFEST_NAME} lists no finished shards yet; wait for `zeroverse render` to land one")
            return candidate, manifest
    raise ValueError(
        f"{root} has no views/{MANIFEST_NAME}: it is not a rendered root (or rendering has not finished a shard). "
        f"Run `zeroverse render --root {root}` first; shard files without a manifest are never read."
    )


def _oneline(err: BaseException) -> str:
    """`Type: message` on one line (Arrow's messages span several)."""
    return f"{type(err).__name__}: {' '.join(str(err).split()).rstrip('.')}"


def _ids_text(ids: Sequence[int]) -> str:
    if not ids:
        return "no shapes"
    return f"shape {ids[0]}" if len(ids) == 1 else f"shapes {ids[0]}..{ids[-1]} ({len(ids)} shapes)"


def _row_group_ids(md: pq.FileMetaData, path: Path) -> list[int]:
    """Shape id of each row group, from the footer's statistics (the writer records min/max of
    shape_id); falls back to reading the shape_id column if a writer left statistics out."""
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    col = names.index("shape_id")
    ids = []
    for rg in range(md.num_row_groups):
        stats = md.row_group(rg).column(col).statistics
        if stats is None or not stats.has_min_max or stats.min != stats.max:
            break
        ids.append(int(stats.min))
    else:
        return ids
    column = pq.read_table(path, columns=["shape_id"])["shape_id"]
    ids, start = [], 0
    for rg in range(md.num_row_groups):
        n = md.row_group(rg).num_rows
        values = set(column.slice(start, n).to_pylist())
        start += n
        if len(values) != 1:
            raise ValueError(f"row group {rg} mixes shapes {sorted(values)[:5]}: one shape per row group is the shard contract")
        ids.append(values.pop())
    return ids


def build_index(views_dir: Path, manifest: Manifest, config: ViewConfig, who: str) -> list[ShapeEntry]:
    """Every usable shape listed by the manifest, sorted by shape id, from Parquet footers only
    (plus the tiny `role` column for view_sampling='eval'); no image is decoded.

    Bad shapes (unreadable shard, too few views) raise a ValueError naming them and the fix, or
    with skip_bad are left out with one warning that counts them."""
    needed = set(_CAMERA_COLUMNS) | {"rgba", "depth", "normal"}
    if "position" in config.channels:
        needed.add("position")
    entries: list[ShapeEntry] = []
    problems: list[str] = []  # one message per bad shape (the first is raised, all are counted)
    bad_files = too_few = 0
    roles_seen: set[str] = set()
    any_input = False
    seen: dict[int, str] = {}
    for shard in sorted(manifest.shards, key=lambda s: s["first"]):
        path = views_dir / shard["file"]
        ids = sorted(int(i) for i in shard["shape_ids"])
        try:
            try:
                md = pq.read_metadata(path)
            except FileNotFoundError:
                raise ValueError("is listed in the manifest but missing") from None
            except (OSError, pa.ArrowException) as err:
                raise ValueError(f"cannot be read as Parquet ({_oneline(err)})") from err
            size = path.stat().st_size
            if shard.get("bytes") is not None and size != shard["bytes"]:
                raise ValueError(f"is {size} bytes but the manifest recorded {shard['bytes']}: it was truncated or replaced")
            columns = set(md.schema.to_arrow_schema().names)
            if not needed - {"position"} <= columns:
                raise ValueError(f"lacks the view columns {sorted(needed - columns)}: it is not a view shard")
            rg_ids = _row_group_ids(md, path)
            roles: dict[int, list[str]] = {}
            if config.view_sampling == "eval":
                table = pq.read_table(path, columns=["shape_id", "role", "projection"])
                for sid, role, proj in zip(*(table[c].to_pylist() for c in ("shape_id", "role", "projection"))):
                    roles_seen.add(role)
                    roles.setdefault(sid, []).append(role if proj == "perspective" else "")
        except (ValueError, OSError, pa.ArrowException) as err:
            problems.extend([f"{path} {err}; it holds {_ids_text(ids)}. Re-render that shard, or pass skip_bad=True to skip its shapes."] * len(ids))
            bad_files += len(ids)
            continue
        if "position" in needed and "position" not in columns:
            raise ValueError(f"{path} has no position column, but channels asks for 'position'; drop it or render with positions")
        where = {sid: rg for rg, sid in enumerate(rg_ids)}
        for sid in ids:
            if sid in seen:
                raise ValueError(f"{views_dir / MANIFEST_NAME} lists shape {sid} in both {seen[sid]} and {path.name}; the manifest is damaged")
            seen[sid] = path.name
            if sid not in where:
                problems.append(f"{path} does not hold shape {sid} although the manifest says so. Re-render that shard, or pass skip_bad=True.")
                bad_files += 1
                continue
            rg = where[sid]
            n = md.row_group(rg).num_rows
            V = config.num_views
            if config.view_sampling == "eval":
                r = roles.get(sid, [])
                n_in, n_t = r.count("input"), r.count("target")
                any_input |= n_in > 0
                if n_in and (n_in < config.num_input_views or n_t < config.num_target_views):
                    problems.append(
                        f"shape {sid} ({path.name}) has {n_in} 'input' and {n_t} 'target' views, but view_sampling='eval' asks "
                        f"for num_input_views={config.num_input_views} and num_target_views={config.num_target_views}; ask for at "
                        f"most {n_in} inputs and {n_t} targets, or pass skip_bad=True to skip such shapes."
                    )
                    too_few += 1
                    continue
                if not n_in:
                    problems.append(f"shape {sid} ({path.name}) has no 'input' views (roles: {sorted(set(r))}); it was not rendered with the eval rig.")
                    too_few += 1
                    continue
            elif n < V:
                problems.append(
                    f"shape {sid} ({path.name}) has {n} views, but {V} were asked (num_input_views={config.num_input_views} "
                    f"+ num_target_views={config.num_target_views}); ask for at most {n} views in total, re-render the shape "
                    "with more views, or pass skip_bad=True to skip such shapes."
                )
                too_few += 1
                continue
            entries.append(ShapeEntry(sid, str(path), rg, n))
    if config.view_sampling == "eval" and not any_input and roles_seen:
        raise ValueError(
            f"{views_dir} was not rendered with the evaluation rig: no view has role 'input' (roles found: "
            f"{sorted(roles_seen)}). Render it with the eval rig (GSO protocol: 4 inputs at elevation 20°, "
            "azimuths 45/135/225/315) or use view_sampling='random'."
        )
    if problems:
        total = len(entries) + len(problems)
        if not config.skip_bad:
            more = (f" [{len(problems)} bad shapes in all: {bad_files} in unreadable or inconsistent shards, {too_few} with "
                    "too few views for this request]") if len(problems) > 1 else ""
            raise ValueError(problems[0] + more)
        warnings.warn(
            f"{who}: skipped {len(problems)} of {total} shapes in {views_dir} ({bad_files} in unreadable or inconsistent "
            f"shards, {too_few} with too few views for this request); first: {problems[0]}",
            stacklevel=3,
        )
    if not entries:
        first = f"; first: {problems[0]}" if problems else ""
        raise ValueError(f"{views_dir}: no usable shapes (the manifest lists {len(problems)}, all bad){first}")
    entries.sort(key=lambda e: e.shape_id)
    return entries


class ShardFiles:
    """Open Parquet files of this process, least recently used closed first.

    Handles never cross a process boundary: pickling (spawned DataLoader workers) drops them,
    and a pid check drops inherited ones after fork, so workers never share file offsets or
    Arrow reader state with their parent.
    """

    def __init__(self, max_open: int = MAX_OPEN_FILES):
        self.max_open = max_open
        self._pid = os.getpid()
        self._files: OrderedDict[str, pq.ParquetFile] = OrderedDict()

    def get(self, path: str) -> pq.ParquetFile:
        if self._pid != os.getpid():
            self._files = OrderedDict()  # inherited through fork: reopen here, leave the parent's alone
            self._pid = os.getpid()
        handle = self._files.pop(path, None)
        if handle is None:
            handle = pq.ParquetFile(path)
            while len(self._files) >= self.max_open:
                _, old = self._files.popitem(last=False)
                old.close()
        self._files[path] = handle
        return handle

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_open"])


class ViewReader:
    """Turns one shape's row group into an item (see the module docstring). Knows nothing of
    epochs or sampling order beyond the (seed, epoch, shape_id) it is handed."""

    def __init__(self, config: ViewConfig, files: ShardFiles | None = None):
        self.config = config
        self.files = files or ShardFiles()
        ch = config.channels
        resizing = config.resolution is not None
        self._need_depth = "depth" in ch or (resizing and ("normal" in ch or "position" in ch))
        heavy = []
        if "rgb" in ch or "alpha" in ch:
            heavy.append("rgba")
        if self._need_depth:
            heavy.append("depth")
        if "normal" in ch:
            heavy.append("normal")
        if "position" in ch:
            heavy.append("position")
        self.columns = _CAMERA_COLUMNS + heavy

    def background(self, epoch: int, shape_id: int) -> Tensor:  # [3]
        bg = self.config.background
        if bg == "random":
            rng = np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=(epoch, shape_id, 1)))
            return torch.from_numpy(rng.random(3).astype(np.float32))
        value = BACKGROUNDS[bg] if isinstance(bg, str) else bg
        return torch.tensor(np.broadcast_to(np.asarray(value, np.float32), (3,)).copy())

    def choose_rows(self, entry: ShapeEntry, views: np.ndarray, roles: list[str], projections: list[str], epoch: int) -> list[int]:
        """Row indices of the V chosen views, inputs first. Random: V distinct perspective views
        seeded by (seed, epoch, shape_id). Eval: the first num_input_views 'input' rows (view
        order), then targets: all 'target' rows if that many are asked, else a subset seeded by
        (seed, shape_id) only, so evaluation does not change with the epoch."""
        cfg = self.config
        order = sorted(range(len(views)), key=lambda i: int(views[i]))
        if cfg.view_sampling == "mixed" and cfg.layout_share > 0:
            layout = [i for i in order if roles[i] == "layout" and projections[i] == "perspective"]
            pick = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(epoch, entry.shape_id, 3)))
            if len(layout) >= cfg.num_input_views and pick.random() < cfg.layout_share:
                rest = [i for i in order if i not in layout[: cfg.num_input_views] and projections[i] == "perspective"]
                if len(rest) >= cfg.num_target_views:
                    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(epoch, entry.shape_id, 0)))
                    chosen = rng.choice(len(rest), size=cfg.num_target_views, replace=False)
                    return layout[: cfg.num_input_views] + [rest[k] for k in chosen]
        if cfg.view_sampling in ("random", "mixed"):
            candidates = [i for i in order if projections[i] == "perspective"]
            if len(candidates) < cfg.num_views:
                raise ShardReadError(
                    f"shape {entry.shape_id} ({entry.path}) has {len(candidates)} perspective views, but {cfg.num_views} "
                    f"were asked (num_input_views + num_target_views); ask for fewer, or pass skip_bad=True."
                )
            rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(epoch, entry.shape_id, 0)))
            return [candidates[k] for k in rng.choice(len(candidates), size=cfg.num_views, replace=False)]
        inputs = [i for i in order if roles[i] == "input" and projections[i] == "perspective"]
        targets = [i for i in order if roles[i] == "target" and projections[i] == "perspective"]
        if len(inputs) < cfg.num_input_views or len(targets) < cfg.num_target_views:
            raise ShardReadError(
                f"shape {entry.shape_id} ({entry.path}) has {len(inputs)} 'input' and {len(targets)} 'target' views; "
                f"view_sampling='eval' asks for {cfg.num_input_views} and {cfg.num_target_views}. Render it with the eval rig, "
                "ask for fewer views, or pass skip_bad=True."
            )
        if cfg.num_target_views < len(targets):
            rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0, entry.shape_id, 2)))
            targets = [targets[k] for k in sorted(rng.choice(len(targets), size=cfg.num_target_views, replace=False))]
        return inputs[: cfg.num_input_views] + targets

    def read_table(self, entry: ShapeEntry) -> pa.Table:
        """The shape's row group, only the needed columns. Any failure -> ShardReadError naming
        the file and the shape."""
        try:
            # One thread: DataLoader workers are the parallelism, and Arrow's pool only adds
            # contention to them (measured: never faster, up to 2x slower on 2 cores).
            table = self.files.get(entry.path).read_row_group(entry.row_group, columns=self.columns, use_threads=False)
        except Exception as err:  # pyarrow raises OSError, ArrowInvalid, ArrowIOError... for damaged files
            raise ShardReadError(
                f"{entry.path}: cannot read shape {entry.shape_id} (row group {entry.row_group}): {_oneline(err)}. "
                "The file is damaged: re-render its shard, or pass skip_bad=True to skip such shapes."
            ) from err
        ids = set(table.column("shape_id").to_pylist())
        if ids != {entry.shape_id}:
            raise ShardReadError(
                f"{entry.path}: row group {entry.row_group} holds shapes {sorted(ids)[:5]}, expected {entry.shape_id}; "
                "the file changed after the dataset was opened. Re-create the dataset."
            )
        return table

    def read(self, entry: ShapeEntry, epoch: int) -> dict[str, Tensor]:
        cfg = self.config
        table = self.read_table(entry)
        views = table.column("view").to_numpy()
        rows = self.choose_rows(entry, views, table.column("role").to_pylist(), table.column("projection").to_pylist(), epoch)
        heights = table.column("height").to_numpy()[rows]
        widths = table.column("width").to_numpy()[rows]
        if cfg.resolution is None and (len(set(heights)) > 1 or len(set(widths)) > 1):
            raise ValueError(
                f"shape {entry.shape_id} ({entry.path}): the chosen views have different sizes "
                f"{sorted(set(zip(heights.tolist(), widths.tolist())))}; pass resolution= to resize them to one size"
            )
        c2w_all = table.column("c2w").to_pylist()
        intr_all = table.column("intrinsics").to_pylist()
        bg = self.background(epoch, entry.shape_id)
        V = len(rows)
        h, w = cfg.resolution or (int(heights[0]), int(widths[0]))
        # Decoded straight into the item's tensors: no per-view stacking copies.
        item = {CHANNEL_KEYS[c]: torch.empty(V, CHANNEL_DIMS[c], h, w) for c in cfg.channels}
        Ks = np.zeros((V, 3, 3), np.float32)
        for v, (row, H, W) in enumerate(zip(rows, heights.tolist(), widths.tolist())):
            try:
                self._decode_view(table, row, v, int(H), int(W), (h, w), bg, item)
            except ValueError as err:
                raise ShardReadError(
                    f"{entry.path}: shape {entry.shape_id}, view {int(views[row])}: {err}. Re-render its shard, or pass skip_bad=True."
                ) from err
            Ks[v] = intrinsics_matrix(np.asarray(intr_all[row], np.float32))
            Ks[v] = scale_intrinsics(torch.from_numpy(Ks[v]), w / W, h / H).numpy()
        item["c2w"] = torch.from_numpy(np.asarray([c2w_all[r] for r in rows], np.float32).reshape(-1, 4, 4))
        item["K"] = torch.from_numpy(Ks)
        item["shape_id"] = torch.tensor(entry.shape_id, dtype=torch.int64)
        item["view_ids"] = torch.from_numpy(views[rows].astype(np.int64))
        item["background"] = bg
        return item

    def _decode_view(self, table: pa.Table, row: int, v: int, H: int, W: int, size: tuple[int, int], bg: Tensor, item: dict) -> None:
        """Decodes row `row` into slot `v` of the item's tensors, resized to `size`."""
        ch = self.config.channels

        def cell(name: str) -> Any:
            scalar = table.column(name)[row]
            return scalar.as_buffer() if scalar.is_valid else None

        if "rgb" in ch or "alpha" in ch:
            rgba = decode_rgba(cell("rgba"))
            if rgba.shape[:2] != (H, W):
                raise ValueError(f"the PNG is {rgba.shape[1]}x{rgba.shape[0]} but the row says {W}x{H}")
            x = torch.from_numpy(rgba)  # [H, W, 4] uint8
            if size == (H, W):
                # Fast path (no resize): one pass per channel, image = bg + (rgb - bg) * alpha.
                alpha = x[..., 3].to(torch.float32).div_(255.0)
                if "alpha" in ch:
                    item["alphas"][v, 0] = alpha
                if "rgb" in ch:
                    image, b = item["images"][v], bg.view(3, 1, 1)
                    torch.sub(x[..., :3].permute(2, 0, 1).to(torch.float32).div_(255.0), b, out=image)
                    image.mul_(alpha).add_(b)
            else:
                premult, alpha = resize_rgba(x.permute(2, 0, 1)[None].to(torch.float32).div_(255.0), size)
                if "alpha" in ch:
                    item["alphas"][v] = alpha[0]
                if "rgb" in ch:
                    item["images"][v] = composite(premult, alpha, bg)[0]
        if not self._need_depth and "normal" not in ch and "position" not in ch:
            return
        depth = torch.from_numpy(decode_depth(cell("depth"), H, W))[None, None] if self._need_depth else None
        others = {}
        if "normal" in ch:
            others["normals"] = torch.from_numpy(decode_normal(cell("normal"), H, W)).permute(2, 0, 1)[None]
        if "position" in ch:
            data = cell("position")
            if data is None:
                raise ValueError("the position cell is null: the shape was rendered without positions; drop 'position' from channels")
            others["positions"] = torch.from_numpy(decode_position(data, H, W)).permute(2, 0, 1)[None]
        if depth is not None:
            depth, others = resize_geometry(depth, size, others)
            if "depth" in ch:
                item["depths"][v] = depth[0]
        for name, value in others.items():
            item[name][v] = value[0]


class ViewSource:
    """What ViewDataset and ViewStream share: the item config, the views root's manifest, the
    index of its shapes and a reader of their views."""

    def __init__(self, root: str | os.PathLike, config: ViewConfig):
        self.config = config
        self.views_dir, self.manifest = resolve_views_dir(root)
        self.entries = build_index(self.views_dir, self.manifest, self.config, type(self).__name__)
        self.reader = ViewReader(self.config)


class ViewDataset(ViewSource, Dataset):
    """Map-style dataset over a rendered root: item i is the i-th shape id (sorted) of the
    manifest, with V views chosen per (seed, epoch, shape_id). See the module docstring for
    the item's tensors; works with DataLoader workers (fork or spawn), persistent workers,
    pin_memory and DistributedSampler."""

    def __init__(
        self,
        root: str | os.PathLike,
        num_input_views: int = 4,
        num_target_views: int = 4,
        resolution: int | tuple[int, int] | None = None,
        channels: Sequence[str] = ("rgb", "alpha", "depth"),
        background: str | float | Sequence[float] = "white",
        view_sampling: str = "random",
        seed: int = 0,
        skip_bad: bool = False,
        layout_share: float = 0.0,
    ):
        super().__init__(root, ViewConfig.make(num_input_views, num_target_views, resolution, channels, background,
                                               view_sampling, seed, skip_bad, layout_share))
        # The epoch lives in shared memory so that set_epoch reaches persistent DataLoader
        # workers, which hold their own copy of this object.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def shape_ids(self) -> list[int]:
        return [e.shape_id for e in self.entries]

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Changes which views each shape yields (random sampling); call before each epoch."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch={epoch!r}: use a non-negative integer")
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -len(self.entries) <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for {len(self.entries)} shapes")
        return self.reader.read(self.entries[index], self.epoch)

    def __repr__(self) -> str:
        c = self.config
        return (f"ViewDataset({str(self.views_dir)!r}, shapes={len(self)}, views={c.num_input_views}+{c.num_target_views}, "
                f"resolution={c.resolution}, channels={c.channels}, sampling={c.view_sampling!r})")


def collate(items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stacks items into a batch: every tensor gains a leading B ([B, V, 3, H, W], [B, V, 4, 4],
    shape_id [B], ...). Items must share keys and sizes (set `resolution` if shapes differ)."""
    if not items:
        raise ValueError("collate got no items")
    keys = list(items[0])
    batch = {}
    for key in keys:
        values = []
        for item in items:
            if key not in item or set(item) != set(keys):
                raise ValueError(f"items differ in keys: {sorted(keys)} vs {sorted(item)}; build them with the same channels")
            values.append(item[key])
        if isinstance(values[0], Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack {key!r} of shapes {sorted(shapes)}; pass resolution= so every view has one size")
            out = None
            if get_worker_info() is not None:
                # In a DataLoader worker, stack straight into shared memory (as default_collate
                # does): the batch then reaches the main process without another copy.
                numel = sum(v.numel() for v in values)
                storage = values[0]._typed_storage()._new_shared(numel, device=values[0].device)
                out = values[0].new(storage).resize_(len(values), *values[0].shape)
            batch[key] = torch.stack(values, out=out)
        else:
            batch[key] = values
    return batch
