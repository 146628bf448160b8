"""Export and read one scene of 3D Gaussians as a standard 3DGS .ply (binary little endian).

Vertex properties (all float32), in the order the 3DGS reference code writes and reads them:
    x y z  nx ny nz (zeros)  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_44 (zeros)  opacity
    scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3
f_dc is the degree-0 spherical-harmonic coefficient, (rgb - 0.5) / C0 with C0 = 0.28209479...;
our Gaussians have view-independent colour, so the higher-degree coefficients f_rest are zeros,
written because the reference loader (gaussian_model.load_ply) asserts 3·((d+1)² − 1) of them
for its SH degree d, 3 by default: 45. Opacity is stored as a logit, scales as logs, rotations as
normalised wxyz quaternions.

Example:
    >>> export_ply(gaussians[0], "scene.ply")   # one scene: tensors [N, ...]
    >>> g = read_ply("scene.ply")                # Gaussians with tensors [N, ...]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .gslrm import Gaussians

SH_C0 = 0.28209479177387814
SH_DEGREE = 3  # the reference loader's default max_sh_degree
NUM_REST = 3 * ((SH_DEGREE + 1) ** 2 - 1)  # 45 higher-order SH coefficients, 15 per colour channel
PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(NUM_REST)]
    + ["opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)
# What read_ply needs: normals and f_rest may be absent (files of older versions, other tools).
REQUIRED = [p for p in PROPERTIES if p not in ("nx", "ny", "nz") and not p.startswith("f_rest_")]


def export_ply(gaussians: Gaussians, path: str | Path) -> Path:
    """Write one scene (tensors [N, ...] or [1, N, ...]) to `path`; returns the path."""
    g = gaussians
    if g.means.dim() == 3:
        if g.means.shape[0] != 1:
            raise ValueError(
                f"export_ply takes one scene; got a batch of {g.means.shape[0]} (index it: g[i])"
            )
        g = g[0]
    if g.means.dim() != 2 or g.means.shape[-1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(g.means.shape)}")
    g = g.detach().to(device="cpu", dtype=torch.float64)
    n = g.means.shape[0]
    quats = g.quats / g.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    opac = g.opacities.clamp(1e-6, 1 - 1e-6)
    cols = np.concatenate(
        [
            g.means.numpy(),
            np.zeros((n, 3)),
            ((g.colors - 0.5) / SH_C0).numpy(),
            np.zeros((n, NUM_REST)),
            torch.log(opac / (1 - opac)).numpy()[:, None],
            torch.log(g.scales.clamp_min(1e-12)).numpy(),
            quats.numpy(),
        ],
        axis=1,
    ).astype("<f4")
    header = "\n".join(
        ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
        + [f"property float {p}" for p in PROPERTIES]
        + ["end_header"]
    ) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(cols).tobytes())
    return path


def read_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS .ply (binary little endian, float properties) into Gaussians [N, ...].

    Extra properties (f_rest_*, ...) are ignored; the ones in REQUIRED must be present.
    """
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary_little_endian PLY is supported")
    n, props, in_vertex = 0, [], False
    sizes = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
             "uchar": "u1", "uint8": "u1", "int": "<i4", "int32": "<i4", "uint": "<u4"}
    for line in lines:
        parts = line.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                n = int(parts[2])
            elif n == 0:
                raise ValueError(f"{path}: elements before 'vertex' are not supported")
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] not in sizes:
                raise ValueError(f"{path}: unsupported property type {parts[1]}")
            props.append((parts[2], sizes[parts[1]]))
    arr = np.frombuffer(data, dtype=np.dtype(props), count=n, offset=end + len(b"end_header\n"))
    names = set(arr.dtype.names)
    missing = [p for p in REQUIRED if p not in names]
    if missing:
        raise ValueError(f"{path}: missing properties {missing}")

    def cols(*keys):
        return torch.from_numpy(np.stack([arr[k].astype(np.float32) for k in keys], axis=-1))

    quats = cols("rot_0", "rot_1", "rot_2", "rot_3")
    return Gaussians(
        means=cols("x", "y", "z"),
        quats=quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12),
        scales=torch.exp(cols("scale_0", "scale_1", "scale_2")),
        opacities=torch.sigmoid(cols("opacity")[:, 0]),
        colors=cols("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5,
    )
