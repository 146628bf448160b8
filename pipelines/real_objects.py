"""Real scanned objects -> a views root in the same format as rendered Zeroverse shapes.

Evaluation then reads them with the same ViewDataset (view_sampling="eval"). Objects are few
(tens), so they render in this process, one Blender, resuming per shard like the farm.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from zeroverse.scene.cameras import RigConfig, make_cameras, rig_identity, rig_rng
from zeroverse.scene.real_objects import list_real_objects, load_real_object
from zeroverse.scene.render_settings import RenderSettings
from zeroverse.store.fs import atomic_write_text
from zeroverse.store.manifest import open_manifest
from zeroverse.store.shards import VIEW_SCHEMA, file_metadata, shard_name, write_shard

GSO_ATTRIBUTION = (
    "Objects from Google Scanned Objects, CC BY 4.0, Copyright 2020 Google LLC. Downs et al., "
    '"Google Scanned Objects: A High-Quality Dataset of 3D Scanned Household Items", ICRA 2022.'
)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def render_real_objects(
    folder: str | Path,
    root: str | Path,
    rig: RigConfig,
    settings: RenderSettings,
    limit: int | None = None,
    shapes_per_shard: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Renders every object of `folder` (or the first `limit`) into ROOT/views; shape_id is the
    object's index in sorted order, names are in the manifest config."""
    from blender_scripts.render_views import BlenderRenderer
    from pipelines.render import encode_view_rows

    paths = list_real_objects(folder)[:limit]
    root = Path(root)
    views_dir = root / "views"
    views_dir.mkdir(parents=True, exist_ok=True)
    names = [p.parent.name if p.name == "model.obj" else p.stem for p in paths]
    identity = {
        "source": str(Path(folder).resolve()),
        "objects": names,
        "rig": rig_identity(rig),
        "render": {k: v for k, v in settings.to_dict().items() if k not in ("threads", "texture_cache")},
    }
    manifest = open_manifest(views_dir, "views", 0, identity)
    try:  # PIL where it exists; Blender's own Python has none, but bpy reads images too
        import PIL  # noqa: F401

        read_image = None
    except ImportError:
        from blender_scripts.images import read_image_rgb as read_image
    textures: dict[int, np.ndarray] = {}
    renderer = None
    started = time.perf_counter()
    written = 0
    try:  # Blender's own Python may lack tqdm: then no bar
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="object", desc="render real objects", disable=not progress)
    except ImportError:
        bar = _NoBar()
    for first in range(0, len(paths), shapes_per_shard):
        ids = list(range(first, min(first + shapes_per_shard, len(paths))))
        last = first + shapes_per_shard - 1
        done = manifest.shard_for(first)
        if done is not None and done["shape_ids"] == ids:
            bar.update(len(ids))
            continue
        if renderer is None:
            renderer = BlenderRenderer(settings, lambda tid: textures[tid])
        rows, groups = [], []
        for sid in ids:
            obj = load_real_object(paths[sid], read_image)
            textures[sid] = obj.texture  # texture id = object index: one cached material each
            bound = float(np.linalg.norm(obj.mesh.vertices, axis=1).max())
            cameras = make_cameras(rig, rig_rng(0, sid), settings.resolution, bound)
            view_rows = encode_view_rows(sid, renderer.render_shape(obj.mesh, np.array([sid], np.int32), cameras), cameras, settings)
            rows.extend(view_rows)
            groups.append(len(view_rows))
            bar.update(1)
        meta = file_metadata("views", identity, 0, {"render": settings.to_dict(), "attribution": GSO_ATTRIBUTION})
        record = write_shard(pa.Table.from_pylist(rows, schema=VIEW_SCHEMA), views_dir / shard_name("views", first, last), meta, groups)
        record.update(first=first, last=last, rows=len(rows), shape_ids=ids, failed=[])
        manifest.replace_shard(record)
        manifest.save(views_dir)
        written += 1
    bar.close()
    if renderer is not None:
        renderer.close()
    atomic_write_text(root / "ATTRIBUTION.txt", GSO_ATTRIBUTION + "\nObjects: " + ", ".join(names) + "\n")
    return {"objects": len(paths), "shards_written": written, "seconds": time.perf_counter() - started, "names": names}
