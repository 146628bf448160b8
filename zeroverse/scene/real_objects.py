"""Real textured meshes (e.g. Google Scanned Objects) as zeroverse meshes, for evaluation.

A folder of objects, each `NAME/model.obj` (+ `model.mtl` naming a `map_Kd` texture, or a
`texture.png` beside it), or any `*.obj` / `*.glb` directly in the folder. Each object is
normalised into [-1, 1]^3 like our shapes and rendered by the same renderer, so that the model
sees real objects exactly as it saw its training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from zeroverse.scene.primitives import MeshArrays, normalise_into_cube


@dataclass
class RealObject:
    name: str
    mesh: MeshArrays  # one region (0), inside [-1, 1]^3
    texture: np.ndarray  # uint8 [H, W, 3]
    source: str


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices [V,3], triangles [F,3], per-corner UVs [F,3,2] of a `v/vt/f` OBJ (polygons are
    fanned into triangles; corners without a vt get (0, 0))."""
    verts, uvs, faces, face_uv = [], [], [], []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("vt "):
            uvs.append([float(x) for x in line.split()[1:3]])
        elif line.startswith("f "):
            corners = [c.split("/") for c in line.split()[1:]]
            vi = [int(c[0]) for c in corners]
            ti = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners]
            for k in range(1, len(corners) - 1):
                faces.append([vi[0], vi[k], vi[k + 1]])
                face_uv.append([ti[0], ti[k], ti[k + 1]])
    v = np.asarray(verts, np.float64)
    f = np.asarray(faces, np.int64)
    f = np.where(f > 0, f - 1, len(v) + f)  # OBJ indices are 1-based; negatives count from the end
    t = np.asarray(face_uv, np.int64)
    uv_table = np.concatenate([np.zeros((1, 2)), np.asarray(uvs, np.float64).reshape(-1, 2)])
    t = np.where(t > 0, t, np.where(t < 0, len(uv_table) + t, 0))
    return v, f, uv_table[t]


def _pil_read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _texture_for(obj_path: Path, read_image: Callable[[Path], np.ndarray]) -> np.ndarray:
    candidates = []
    mtl = obj_path.with_suffix(".mtl")
    if mtl.exists():
        for line in mtl.read_text(errors="replace").splitlines():
            if line.strip().startswith("map_Kd"):
                candidates.append(obj_path.parent / line.split(None, 1)[1].strip())
    candidates.append(obj_path.parent / "texture.png")
    for path in candidates:
        if path.exists():
            return read_image(path)
    return np.full((8, 8, 3), 200, np.uint8)  # untextured: light grey


def load_real_object(path: str | Path, read_image: Callable[[Path], np.ndarray] | None = None) -> RealObject:
    """One object: an OBJ (v/vt/f) with its texture, or a GLB through trimesh. `read_image`
    decodes the texture (default PIL; Blender's Python passes a bpy-based reader)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.obj"
    if not path.exists():
        raise ValueError(f"{path}: no such mesh; expected NAME/model.obj or a .obj/.glb file")
    if path.suffix.lower() == ".obj":
        v, f, uv = _read_obj(path)
        texture = _texture_for(path, read_image or _pil_read_rgb)
    elif path.suffix.lower() in (".glb", ".gltf"):
        import trimesh

        mesh = trimesh.load(path, force="mesh")
        v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
        vertex_uv = getattr(mesh.visual, "uv", None)
        uv = np.zeros((len(f), 3, 2)) if vertex_uv is None else np.asarray(vertex_uv)[f]
        image = getattr(getattr(mesh.visual, "material", None), "baseColorTexture", None)
        texture = np.asarray(image.convert("RGB")) if image is not None else np.full((8, 8, 3), 200, np.uint8)
    else:
        raise ValueError(f"{path}: unsupported mesh format {path.suffix!r}; use .obj or .glb")
    if len(f) == 0:
        raise ValueError(f"{path}: the mesh has no faces")
    uv = np.mod(uv, 1.0)  # scanned objects sometimes wrap UVs; our renderer clamps at the edges
    mesh = MeshArrays(v.astype(np.float32), f.astype(np.int32), uv.astype(np.float32), np.zeros(len(f), np.int32))
    normalised, _, _ = normalise_into_cube(mesh)
    name = path.parent.name if path.name == "model.obj" else path.stem
    return RealObject(name, normalised, texture, str(path))


def list_real_objects(folder: str | Path) -> list[Path]:
    """Mesh paths under `folder` (NAME/model.obj, NAME/*.glb, or meshes directly inside), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--real {str(folder)!r} is not a directory of meshes")
    base = folder / "objects" if (folder / "objects").is_dir() else folder
    found = sorted(p for p in base.glob("*/model.obj")) or sorted(base.glob("*/*.glb"))
    found = found or sorted(p for p in base.iterdir() if p.suffix.lower() in (".obj", ".glb"))
    if not found:
        raise ValueError(f"--real {str(folder)!r} holds no NAME/model.obj, NAME/*.glb, *.obj or *.glb meshes")
    return found
