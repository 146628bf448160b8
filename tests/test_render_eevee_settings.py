"""EEVEE's scene set-up: shadows only where the world could cast them, extra settings checked by
name. Built in a real Blender without rendering (setting up EEVEE needs no GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from zeroverse.scene.render_settings import RenderSettings


def test_eevee_options_keep_old_identities_and_refuse_malformed_pairs():
    assert "eevee_options" not in RenderSettings().to_dict()  # roots rendered before the field keep their identity
    pairs = (("world.probe_resolution", "128"), ("use_fast_gi", False))
    assert RenderSettings(eevee_options=pairs).to_dict()["eevee_options"] == [["world.probe_resolution", "128"], ["use_fast_gi", False]]
    for bad in ((("use fast gi", False),), (("use_fast_gi",),), ("use_fast_gi",)):
        with pytest.raises(ValueError, match="eevee_options entry"):
            RenderSettings(eevee_options=bad)


@pytest.mark.blender
@pytest.mark.parametrize("strength, shadows", [(1.0, False), (5.0, False), (8.0, True)])
def test_shadows_only_where_the_world_can_cast_them(strength, shadows):
    """A uniform world casts no shadow unless EEVEE extracts a sun from it (radiance above
    world.sun_threshold = 10; random light reaches 1.4x the strength)."""
    from blender_scripts.render_views import BlenderRenderer
    import bpy

    renderer = BlenderRenderer(RenderSettings(engine="eevee", light_strength=strength), lambda i: np.zeros((4, 4, 3), np.uint8))
    try:
        assert bpy.context.scene.eevee.use_shadows is shadows
    finally:
        renderer.close()


@pytest.mark.blender
def test_eevee_options_reach_the_scene_and_the_world_and_unknown_names_are_refused():
    from blender_scripts.render_views import BlenderRenderer
    import bpy

    texture = lambda i: np.zeros((4, 4, 3), np.uint8)  # noqa: E731
    options = (("world.probe_resolution", "128"), ("use_fast_gi", False), ("taa_render_samples", 3))
    renderer = BlenderRenderer(RenderSettings(engine="eevee", samples=16, eevee_options=options), texture)
    try:
        scene = bpy.context.scene
        assert scene.world.probe_resolution == "128" and scene.eevee.use_fast_gi is False
        assert scene.eevee.taa_render_samples == 3  # options come last: they win over the farm's own settings
    finally:
        renderer.close()
    with pytest.raises(ValueError, match="use_fastgi.*SceneEEVEE"):
        BlenderRenderer(RenderSettings(engine="eevee", eevee_options=(("use_fastgi", False),)), texture)
    with pytest.raises(ValueError, match="world.probe_res.*World"):
        BlenderRenderer(RenderSettings(engine="eevee", eevee_options=(("world.probe_res", "128"),)), texture)
