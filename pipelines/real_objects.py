"""Real scanned objects -> a views root in the same format as rendered Zeroverse shapes: a farm
job like `render` (`zeroverse render --real DIR --root OUT`), through the same executor and
render step, with the objects as the step's shape source.

Evaluation then reads them with the same ViewDataset (view_sampling="eval"). Objects are few
(tens): by default one local worker process renders them, resuming per shard like the farm.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zeroverse.scene.cameras import RigConfig, rig_identity
from zeroverse.scene.primitives import MeshArrays
from zeroverse.scene.real_objects import list_real_objects, load_real_object
from zeroverse.scene.render_settings import RenderSettings
from zeroverse.store.fs import atomic_write_text
from zeroverse.store.manifest import open_manifest

GSO_ATTRIBUTION = (
    "Objects from Google Scanned Objects, CC BY 4.0, Copyright 2020 Google LLC. Downs et al., "
    '"Google Scanned Objects: A High-Quality Dataset of 3D Scanned Household Items", ICRA 2022.'
)


class RealObjects:
    """The render step's shape source for real objects: shape_id is the object's index in sorted
    order, and its texture id too (one cached material each)."""

    def __init__(self, paths: list[Path], identity: dict[str, Any]):
        self.paths, self.identity = paths, identity
        self.seed = 0
        self.extra_metadata = {"attribution": GSO_ATTRIBUTION}
        self.textures: dict[int, np.ndarray] = {}
        self.read_image: Callable | None = None

    def open(self) -> Callable[[int], np.ndarray]:
        try:  # PIL where it exists; Blender's own Python has none, but bpy reads images too
            import PIL  # noqa: F401
        except ImportError:
            from blender_scripts.images import read_image_rgb

            self.read_image = read_image_rgb
        return lambda texture_id: self.textures[texture_id]

    def read(self, shape_ids: list[int]) -> dict[int, tuple[MeshArrays, np.ndarray]]:
        out = {}
        for sid in shape_ids:
            obj = load_real_object(self.paths[sid], self.read_image)
            self.textures[sid] = obj.texture
            out[sid] = (obj.mesh, np.array([sid], np.int32))
        return out


def object_names(paths: list[Path]) -> list[str]:
    return [p.parent.name if p.name == "model.obj" else p.stem for p in paths]


def render_real_objects(
    folder: str | Path,
    root: str | Path,
    rig: RigConfig,
    settings: RenderSettings,
    limit: int | None = None,
    shapes_per_shard: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Renders every object of `folder` (or the first `limit`) into ROOT/views on one local
    worker process; shape_id is the object's index in sorted order, names are in the manifest config."""
    return run_real(folder, root, rig, settings, limit, shapes_per_shard, progress)


def run_real(folder: str | Path, root: str | Path, rig: RigConfig, settings: RenderSettings, limit: int | None = None,
             shapes_per_shard: int = 8, progress: bool = True, backend: str = "processes", **options: Any) -> dict[str, Any]:  # fmt: skip
    """render_real_objects on any executor backend (`options`: make_backend's; one worker by default)."""
    from pipelines.executor import Job, execute, make_backend
    from pipelines.render import RenderConfig, pending_shards, view_shard_plan, views_per_shape
    from pipelines.scratch import sweep
    from pipelines.view_writer import ViewShardWriter

    started = time.perf_counter()
    paths = list_real_objects(folder)[:limit]
    root = Path(root)
    cfg = RenderConfig(root=root, rig=rig, settings=settings, shapes_per_shard=shapes_per_shard)
    views_dir = root / "views"
    views_dir.mkdir(parents=True, exist_ok=True)
    names = object_names(paths)
    identity = {
        "source": str(Path(folder).resolve()),
        "objects": names,
        "rig": rig_identity(rig),
        "render": {k: v for k, v in settings.to_dict().items() if k not in ("threads", "texture_cache")},
    }
    manifest = open_manifest(views_dir, "views", 0, identity)
    todo, _ = pending_shards(manifest, view_shard_plan(list(range(len(paths))), shapes_per_shard))
    written = 0
    if todo:
        make_step = functools.partial(ViewShardWriter, cfg, source=RealObjects(paths, identity))
        job = Job(stage="render", directory=views_dir, manifest=manifest, tasks=todo, make_step=make_step, max_attempts=cfg.max_attempts,
                  shape_timeout_s=cfg.shape_timeout_s, units_per_shape=views_per_shape(rig), unit="view", cleanup=sweep)  # fmt: skip
        options["workers"] = options.get("workers") or 1  # objects are few: one Blender
        outcome = execute(job, make_backend(backend, "render", make_step, **options), progress, "render real objects")
        written = len(outcome.written)
        if outcome.failures:
            first = outcome.failures[0]
            raise ValueError(f"{len(outcome.failures)} real object(s) failed to render, e.g. shape {first.shape_id}: {first.reason}")
    atomic_write_text(root / "ATTRIBUTION.txt", GSO_ATTRIBUTION + "\nObjects: " + ", ".join(names) + "\n")
    return {"objects": len(paths), "shards_written": written, "seconds": time.perf_counter() - started, "names": names}

