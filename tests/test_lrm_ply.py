import numpy as np
import pytest
import torch

from zeroverse.lrm.gslrm import Gaussians
from zeroverse.lrm.ply import PROPERTIES, SH_C0, export_ply, read_ply


def _gaussians(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, n, 4, generator=g)
    return Gaussians(
        means=torch.randn(1, n, 3, generator=g),
        quats=q / q.norm(dim=-1, keepdim=True),
        scales=torch.rand(1, n, 3, generator=g) * 0.1 + 1e-3,
        opacities=torch.rand(1, n, generator=g) * 0.98 + 0.01,
        colors=torch.rand(1, n, 3, generator=g),
    )


def test_round_trip(tmp_path):
    g = _gaussians()
    path = export_ply(g, tmp_path / "scene.ply")
    back = read_ply(path)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name)[0], atol=1e-5, rtol=1e-5)


def test_standard_layout(tmp_path):
    g = _gaussians(n=3)
    path = export_ply(g[0], tmp_path / "s.ply")  # unbatched works too
    data = path.read_bytes()
    header, body = data.split(b"end_header\n")
    lines = header.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 3"]
    assert [line.split()[-1] for line in lines[3:]] == PROPERTIES
    assert all(line.startswith("property float ") for line in lines[3:])
    rows = np.frombuffer(body, dtype="<f4").reshape(3, len(PROPERTIES))
    col = {p: rows[:, i] for i, p in enumerate(PROPERTIES)}
    np.testing.assert_allclose(col["f_dc_0"], (g.colors[0, :, 0].numpy() - 0.5) / SH_C0, rtol=1e-5)
    o = g.opacities[0].numpy()
    np.testing.assert_allclose(col["opacity"], np.log(o / (1 - o)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(col["scale_1"], np.log(g.scales[0, :, 1].numpy()), rtol=1e-5)
    np.testing.assert_allclose(col["nx"], 0)


def test_rejects_batches(tmp_path):
    g = _gaussians()
    two = Gaussians(*(torch.cat([t, t]) for t in (g.means, g.quats, g.scales, g.opacities, g.colors)))
    with pytest.raises(ValueError, match="one scene"):
        export_ply(two, tmp_path / "x.ply")


def test_the_reference_3dgs_loader_reads_every_field(tmp_path):
    """What graphdeco's gaussian_model.load_ply reads, through plyfile as it does: every field by
    name, and exactly 3·((3+1)² − 1) = 45 f_rest_* (it asserts that count at SH degree 3)."""
    plyfile = pytest.importorskip("plyfile")
    g = _gaussians(n=5)
    path = export_ply(g, tmp_path / "scene.ply")
    vertex = plyfile.PlyData.read(str(path)).elements[0]
    reference = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                 + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])  # fmt: skip
    assert vertex.name == "vertex" and vertex.count == 5
    assert [p.name for p in vertex.properties] == reference
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in reference)
    extra = sorted((p.name for p in vertex.properties if p.name.startswith("f_rest_")), key=lambda x: int(x.split("_")[-1]))
    assert len(extra) == 3 * (3 + 1) ** 2 - 3
    rest = np.stack([np.asarray(vertex[name]) for name in extra], axis=1).reshape(5, 3, (3 + 1) ** 2 - 1)
    assert not rest.any()  # view-independent colour: no higher-order SH
    np.testing.assert_allclose(np.asarray(vertex["f_dc_2"]), (g.colors[0, :, 2].numpy() - 0.5) / SH_C0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(vertex["rot_0"]), g.quats[0, :, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_reads_files_without_f_rest_or_normals(tmp_path):
    """Files of older zeroverse versions (and other tools) have no f_rest_*: still read."""
    g = _gaussians(n=4)
    kept = [p for p in PROPERTIES if not p.startswith(("f_rest_", "n"))]
    path = export_ply(g, tmp_path / "full.ply")
    header, body = path.read_bytes().split(b"end_header\n")
    rows = np.frombuffer(body, dtype="<f4").reshape(4, len(PROPERTIES))[:, [PROPERTIES.index(p) for p in kept]]
    lines = ["ply", "format binary_little_endian 1.0", "element vertex 4"] + [f"property float {p}" for p in kept] + ["end_header"]
    old = tmp_path / "old.ply"
    old.write_bytes(("\n".join(lines) + "\n").encode() + np.ascontiguousarray(rows).tobytes())
    back = read_ply(old)
    torch.testing.assert_close(back.colors, g.colors[0], atol=1e-5, rtol=1e-5)
