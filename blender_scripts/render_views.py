"""Shape + cameras -> RGBA, depth and normals, rendered by a long-lived Blender (bpy, numpy,
stdlib and pure zeroverse modules only: the same file runs in Blender's Python on GPU nodes).

One `BlenderRenderer` per worker process: the scene, world, camera and render settings are made
once in __init__; each shape only adds its mesh and reuses cached per-texture materials, then is
deleted again (purging orphans: 1-8 ms, flat memory, against 75-200 ms for a factory reset).
Passes leave Blender as an uncompressed multilayer EXR on a scratch directory (tmpfs where there
is one) and are read with zeroverse.scene.imageio, because Blender's Python API cannot hand render
results to Python directly in background mode.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import bpy
import numpy as np

from blender_scripts.blender_mesh import new_triangle_object
from blender_scripts.gpu_binding import configure_render_device
from zeroverse.scene.cameras import CameraSet
from zeroverse.scene.imageio import read_exr_channels, srgb_encode
from zeroverse.scene.primitives import MeshArrays
from zeroverse.scene.render_settings import RenderSettings
from zeroverse.scene.render_timing import StageClock

# Blender's camera looks down -Z with +Y up; OpenCV's looks down +Z with +Y down.
_OPENCV_TO_BLENDER = np.diag([1.0, -1.0, -1.0, 1.0])
EMPTY_DEPTH = 1e9  # Cycles writes 1e10 where a ray hit nothing
SHAPE_PREFIX = "zv_shape"


@dataclass
class ViewArrays:
    rgba: np.ndarray  # uint8 [H, W, 4], straight alpha, sRGB
    depth: np.ndarray  # float32 [H, W], planar z, 0 where empty
    normal: np.ndarray  # float32 [H, W, 3], world space, 0 where empty


@contextlib.contextmanager
def quiet_stdout():
    """Silences Blender's per-frame C-level prints ("Fra:", "Saved:") that would drown the
    progress bar; ZEROVERSE_BLENDER_LOG=1 keeps them for debugging."""
    if os.environ.get("ZEROVERSE_BLENDER_LOG") == "1":
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class BlenderRenderer:
    """Renders shapes in one Blender. `texture` maps a texture id to uint8 [R, R, 3]."""

    def __init__(self, settings: RenderSettings, texture: Callable[[int], np.ndarray], scratch_dir: str | None = None, device: int | None = None):
        """`device`: the physical GPU this process was bound to (blender_scripts.gpu_binding,
        before bpy was imported), or None; recorded by device_report()."""
        self.settings = settings
        self._texture = texture
        self._materials: OrderedDict[int, bpy.types.Material] = OrderedDict()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self._scratch = tempfile.mkdtemp(prefix="zv-render-", dir=scratch_dir or shm)
        self._exr = os.path.join(self._scratch, "view.exr")
        self.device = device
        self._gpu_report: dict | None = None
        with quiet_stdout():
            self._setup_scene()
        # Before the first render: Blender creates its GPU context then (background mode).
        self.gpu_binding = configure_render_device(device, settings.engine)

    def device_report(self) -> dict:
        """Which device rendered, for the view shard's metadata: the physical GPU index this
        process was bound to (None: none), the engine, and what Blender reports: the GPU
        renderer string (EEVEE / Workbench; known once a view was rendered, as Blender creates
        its GPU context on the first render) or Cycles' device type."""
        report = {"index": self.device, "engine": self.settings.engine}
        if self.settings.engine == "cycles":
            return {**report, "device": bpy.context.scene.cycles.device}
        report["gpu_binding"] = self.gpu_binding
        if self._gpu_report is None:
            import gpu

            try:
                self._gpu_report = {
                    "renderer": gpu.platform.renderer_get(),
                    "backend": gpu.platform.backend_type_get(),
                    "device_type": gpu.platform.device_type_get(),
                }
            except Exception as err:  # noqa: BLE001 - no GPU context yet (nothing rendered) or none at all
                return {**report, "renderer": f"unknown ({type(err).__name__}: {err})"}
        return {**report, **self._gpu_report}

    # ---- one-time scene set-up -------------------------------------------------------------
    def _setup_scene(self) -> None:
        s = self.settings
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        render = scene.render
        render.resolution_x = render.resolution_y = s.resolution
        render.resolution_percentage = 100
        render.film_transparent = True
        render.use_persistent_data = True  # keeps Cycles' scene state between views of a shape
        render.image_settings.media_type = "MULTI_LAYER_IMAGE"  # Blender 5: multilayer is a media type
        render.image_settings.file_format = "OPEN_EXR_MULTILAYER"
        render.image_settings.color_depth = "32"
        render.image_settings.exr_codec = "NONE"
        render.filepath = self._exr
        scene.view_settings.view_transform = "Standard"
        if s.engine == "cycles":
            render.engine = "CYCLES"
            cycles = scene.cycles
            cycles.device = "CPU"
            cycles.samples = s.samples
            cycles.use_adaptive_sampling = True
            cycles.use_denoising = s.denoise
            if s.denoise:
                # OIDN with its fastest settings: with the defaults (accurate prefilter, albedo +
                # normal guides, high quality) denoising cost 3x the 16-sample render at 256².
                cycles.denoiser = "OPENIMAGEDENOISE"
                cycles.denoising_input_passes = "RGB_ALBEDO"
                cycles.denoising_prefilter = "FAST"
                cycles.denoising_quality = "FAST"
            cycles.max_bounces = s.max_bounces
            cycles.diffuse_bounces = min(2, s.max_bounces)
            cycles.glossy_bounces = min(2, s.max_bounces)
            cycles.transmission_bounces = 0
            cycles.transparent_max_bounces = 2
            cycles.caustics_reflective = cycles.caustics_refractive = False
        elif s.engine == "eevee":
            render.engine = "BLENDER_EEVEE"
            scene.eevee.taa_render_samples = s.samples
        elif s.engine == "workbench":
            render.engine = "BLENDER_WORKBENCH"
            scene.display.shading.light = "STUDIO"
            scene.display.shading.color_type = "TEXTURE"
        else:
            raise ValueError(f"engine {s.engine!r} must be resolved to cycles, eevee or workbench before rendering")
        # Fixed threads for every engine: Blender otherwise starts a thread per core in each
        # worker, and N workers on one node fight over N x cores threads.
        render.threads_mode = "FIXED"
        render.threads = max(1, s.threads)
        layer = scene.view_layers[0]
        layer.use_pass_z = True
        layer.use_pass_normal = True

        world = bpy.data.worlds.new("zv_world")
        world.use_nodes = True
        scene.world = world
        self._background = world.node_tree.nodes["Background"]
        self.set_light(s.light_strength, s.light_color)
        if s.engine == "eevee":
            # The only light is a uniform world, which casts no shadows unless EEVEE extracts a
            # sun from it (radiance above world.sun_threshold, 10; random_light reaches 1.4x the
            # strength). EEVEE still renders its shadow maps every sample: switching them off gave
            # identical pixels and 1.33x the views/s at 512², 12 processes on an H200
            # (bench/eevee_ablation.py, bench/results/render_gpu.json).
            scene.eevee.use_shadows = 1.4 * s.light_strength * max(s.light_color) >= world.sun_threshold
            for name, value in s.eevee_options:
                # "world.x": a setting of the world (bpy.types.World), else of the scene's EEVEE.
                owner, attr = (world, name[len("world."):]) if name.startswith("world.") else (scene.eevee, name)
                if not hasattr(owner, attr):
                    raise ValueError(f"eevee option {name!r} is not a setting of Blender {bpy.app.version_string}'s "
                                     f"{type(owner).__name__} (names: SceneEEVEE properties, or world.<World property>)")
                setattr(owner, attr, value)

        camera = bpy.data.cameras.new("zv_camera")
        camera.sensor_fit = "HORIZONTAL"
        camera.sensor_width = 36.0
        self._camera = bpy.data.objects.new("zv_camera", camera)
        scene.collection.objects.link(self._camera)
        scene.camera = self._camera

    def set_light(self, strength: float, color: tuple[float, float, float]) -> None:
        self._background.inputs["Color"].default_value = (*color, 1.0)
        self._background.inputs["Strength"].default_value = strength

    # ---- per shape ---------------------------------------------------------------------------
    def _material(self, texture_id: int) -> bpy.types.Material:
        """One cached material per texture id: after warm-up a shape creates no images or shaders."""
        mat = self._materials.get(texture_id)
        if mat is not None:
            self._materials.move_to_end(texture_id)
            return mat
        pixels = self._texture(texture_id)
        h, w = pixels.shape[:2]
        image = bpy.data.images.new(f"zv_tex_{texture_id}", w, h, alpha=False)
        rgba = np.ones((h, w, 4), np.float32)
        rgba[..., :3] = pixels[::-1] / 255.0  # Blender images start at the bottom row (v = 0)
        image.pixels.foreach_set(rgba.reshape(-1))
        image.use_fake_user = True
        mat = bpy.data.materials.new(f"zv_mat_{texture_id}")
        mat.use_nodes = True
        mat.use_fake_user = True
        nodes = mat.node_tree.nodes
        bsdf = nodes["Principled BSDF"]
        bsdf.inputs["Roughness"].default_value = 0.7
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = image
        tex.extension = "EXTEND"
        mat.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        self._materials[texture_id] = mat
        while len(self._materials) > self.settings.texture_cache:
            _, old = self._materials.popitem(last=False)
            old_image = old.node_tree.nodes["Image Texture"].image
            bpy.data.materials.remove(old, do_unlink=True)
            bpy.data.images.remove(old_image, do_unlink=True)
        return mat

    def add_shape(self, mesh: MeshArrays, region_textures: np.ndarray, clock: StageClock) -> bpy.types.Object:
        with clock("scene"):
            obj = new_triangle_object(SHAPE_PREFIX, mesh.vertices, mesh.faces, mesh.uvs, mesh.regions)
            data = obj.data
            unique, slot_of_region = np.unique(region_textures, return_inverse=True)
        with clock("materials"):
            for texture_id in unique.tolist():
                data.materials.append(self._material(int(texture_id)))
        with clock("scene"):
            data.polygons.foreach_set("material_index", slot_of_region[mesh.regions].astype(np.int32))
            # Curved primitives shade smooth, box edges and cuts stay crisp.
            data.shade_smooth()
            data.set_sharp_from_angle(angle=math.radians(30.0))
        return obj

    def clear_shape(self) -> None:
        for obj in [o for o in bpy.data.objects if o.name.startswith(SHAPE_PREFIX)]:
            mesh = obj.data
            bpy.data.objects.remove(obj, do_unlink=True)
            bpy.data.meshes.remove(mesh, do_unlink=True)
        bpy.data.orphans_purge(do_local_ids=True, do_recursive=True)

    def place_camera(self, c2w: np.ndarray, intrinsics: np.ndarray, projection: str) -> None:
        from mathutils import Matrix

        w, h = self.settings.resolution, self.settings.resolution
        fx, fy, cx, cy = (float(x) for x in intrinsics)
        if abs(fx - fy) > 1e-6 * fx:
            raise ValueError(f"non-square pixels (fx={fx}, fy={fy}) are not supported by the Blender camera")
        cam = self._camera.data
        if projection == "orthographic":
            cam.type = "ORTHO"
            cam.ortho_scale = max(w, h) / fx
        else:
            cam.type = "PERSP"
            cam.lens = fx * cam.sensor_width / max(w, h)
        cam.shift_x = -(cx - w / 2.0) / max(w, h)
        cam.shift_y = (cy - h / 2.0) / max(w, h)
        self._camera.matrix_world = Matrix((np.asarray(c2w, dtype=np.float64) @ _OPENCV_TO_BLENDER).tolist())

    def set_clip(self, near: float, far: float) -> None:
        self._camera.data.clip_start = near
        self._camera.data.clip_end = far

    @property
    def exr_path(self) -> str:
        """Where the last view's passes were written (a multilayer EXR on scratch)."""
        return self._exr

    def render_view(self, c2w: np.ndarray, intrinsics: np.ndarray, projection: str, clock: StageClock) -> dict[str, np.ndarray]:
        """One view of the scene as it stands: its raw passes (EXR channel name -> float32 [H, W])."""
        with clock("scene"):
            self.place_camera(c2w, intrinsics, projection)
        with quiet_stdout():
            # Render, then write the passes as a second step (same file as write_still=True) so
            # that the two are timed apart.
            with clock("render"):
                bpy.ops.render.render(write_still=False)
            with clock("pass_write"):
                bpy.data.images["Render Result"].save_render(self._exr, scene=bpy.context.scene)
        with clock("pass_read"):
            return read_exr_channels(self._exr)

    def render_passes(self, mesh: MeshArrays, region_textures: np.ndarray, cameras: CameraSet, clock: StageClock | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Renders every camera of `cameras`, yielding each view's raw passes (EXR channel name ->
        float32 [H, W]) as soon as it is read back, so that a caller can convert and encode view k
        in another thread while Blender renders view k + 1 (the render call releases the GIL).
        Each yielded dict owns its memory. The scene is empty again when the generator finishes
        or is closed. `clock` (optional) receives seconds per stage (zeroverse.scene.render_timing)."""
        if cameras.width != self.settings.resolution or cameras.height != self.settings.resolution:
            raise ValueError(
                f"cameras are {cameras.width}x{cameras.height} but the renderer makes {self.settings.resolution}^2 images"
            )
        clock = StageClock() if clock is None else clock
        with clock("scene"):
            self.clear_shape()
        self.add_shape(mesh, region_textures, clock)
        self.set_clip(cameras.near, cameras.far)
        try:
            for c2w, intr, projection in zip(cameras.c2w, cameras.intrinsics, cameras.projections):
                yield self.render_view(c2w, intr, projection, clock)
        finally:
            with clock("scene"):
                self.clear_shape()

    def render_shape(self, mesh: MeshArrays, region_textures: np.ndarray, cameras: CameraSet, clock: StageClock | None = None) -> list[ViewArrays]:
        """Renders every camera of `cameras` into ViewArrays, one after the other; leaves the
        scene empty again."""
        clock = StageClock() if clock is None else clock
        views = []
        with contextlib.closing(self.render_passes(mesh, region_textures, cameras, clock)) as passes:
            for channels in passes:
                with clock("convert"):
                    views.append(passes_to_view(channels))
        return views

    def close(self) -> None:
        import shutil

        shutil.rmtree(self._scratch, ignore_errors=True)


def find_channel(channels: dict[str, np.ndarray], suffix: str) -> np.ndarray:
    for name, values in channels.items():
        if name.endswith(suffix):
            return values
    raise KeyError(f"render pass channel *{suffix} missing; got {sorted(channels)}")


NEIGHBOURS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
# Linear [0, 1] -> sRGB8 through a table: np.power over a 512² image cost ~8 ms a view.
SRGB_LUT_SIZE = 16384
SRGB_LUT = np.round(srgb_encode(np.linspace(0.0, 1.0, SRGB_LUT_SIZE)) * 255.0).astype(np.uint8)


def passes_to_view(channels: dict[str, np.ndarray]) -> ViewArrays:
    """EXR passes -> straight-alpha sRGB8 RGBA, planar depth and unit world normals, with depth
    and normals defined exactly where the 8-bit alpha is non-zero.

    Cycles' depth is one sample per pixel (not anti-aliased) while alpha is, so at silhouette
    edges they disagree: a covered pixel whose depth sample missed takes depth and normal from
    its nearest-in-depth hit neighbour (two rings), coverage without any hit within 2 px is
    dropped, and depth is cleared where alpha is 0.

    Whole-plane arithmetic, one [H, W] plane at a time, and masks applied to planes before they
    are interleaved: gathering the covered pixels by (y, x) index (the previous version, same
    output bit for bit) cost 21-67 ms per 512² view, this 10-15 ms; masking an interleaved
    [H, W, 3] array by an [H, W] mask alone cost 6 ms.
    """
    alpha = find_channel(channels, "Combined.A")
    h, w = alpha.shape
    alpha8 = np.clip(alpha, 0.0, 1.0)
    alpha8 *= 255.0
    alpha8 = np.rint(alpha8, out=alpha8).astype(np.uint8)  # rint: the same half-to-even rounding as np.round
    depth = find_channel(channels, "Depth.Z")
    depth = np.where(depth < EMPTY_DEPTH, depth, np.float32(0.0)).astype(np.float32, copy=False)
    normal = [np.array(find_channel(channels, f"Normal.{c}"), np.float32) for c in "XYZ"]  # copies: edited below

    covered = alpha8 > 0
    missing = covered & (depth <= 0)
    for _ in range(2):
        if not missing.any():
            break
        ys, xs = np.nonzero(missing)
        ny = np.clip(ys[:, None] + NEIGHBOURS[None, :, 0], 0, h - 1)
        nx = np.clip(xs[:, None] + NEIGHBOURS[None, :, 1], 0, w - 1)
        candidates = depth[ny, nx]
        candidates = np.where(candidates > 0, candidates, np.inf)
        best = np.argmin(candidates, axis=1)
        found = np.isfinite(candidates[np.arange(len(ys)), best])
        by, bx = ny[np.arange(len(ys)), best][found], nx[np.arange(len(ys)), best][found]
        fy, fx = ys[found], xs[found]
        depth[fy, fx] = depth[by, bx]
        for plane in normal:
            plane[fy, fx] = plane[by, bx]
        missing[fy, fx] = False
    covered &= ~missing
    empty = ~covered
    alpha8[empty] = 0
    depth[empty] = 0.0

    rgba = np.empty((h, w, 4), np.uint8)
    rgba[..., 3] = alpha8
    safe_alpha = np.maximum(alpha, np.float32(1e-6))
    t = np.empty((h, w), np.float32)
    for c, name in enumerate("RGB"):
        np.divide(find_channel(channels, f"Combined.{name}"), safe_alpha, out=t)  # straight alpha
        np.clip(t, 0.0, 1.0, out=t)
        t *= np.float32(SRGB_LUT_SIZE - 1)
        t += np.float32(0.5)
        np.copyto(t, 0.0, where=empty)  # SRGB_LUT[0] == 0
        rgba[..., c] = SRGB_LUT.take(t.astype(np.uint16))
    x, y, z = normal
    norm = x * x
    norm += y * y
    norm += z * z
    np.sqrt(norm, out=norm)
    np.maximum(norm, np.float32(1e-6), out=norm)
    out_normal = np.empty((h, w, 3), np.float32)
    for c, plane in enumerate(normal):
        np.divide(plane, norm, out=plane)
        np.copyto(plane, 0.0, where=empty)
        out_normal[..., c] = plane
    return ViewArrays(rgba, depth, out_normal)
