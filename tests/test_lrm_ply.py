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
