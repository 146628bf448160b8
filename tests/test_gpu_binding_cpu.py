"""The EEVEE GPU binding's CPU-checkable parts: the pinned bpy keeps the symbol the binding
patches, and a machine that cannot be bound renders on its default device instead of failing.
(That a worker asked for GPU k renders on GPU k is checked on the GPU machine: tests/test_gpu_binding.py.)"""

import pytest

bpy = pytest.importorskip("bpy")

from blender_scripts.gpu_binding import bpy_extension, elf_symbols, bind_from_environment  # noqa: E402

pytestmark = pytest.mark.blender


def test_pinned_bpy_keeps_the_pointer_the_binding_patches():
    symbols = elf_symbols(bpy_extension(bpy), ["PyInit_bpy", "epoxy_eglGetDisplay"])
    assert set(symbols) == {"PyInit_bpy", "epoxy_eglGetDisplay"} and all(symbols.values())


def test_no_index_keeps_the_default_and_failure_never_raises(monkeypatch):
    assert bind_from_environment(bpy, None) == "default device"
    monkeypatch.setenv("ZEROVERSE_GPU_BINDING", "off")
    assert "turned off" in bind_from_environment(bpy, 1)
    monkeypatch.delenv("ZEROVERSE_GPU_BINDING")
    from blender_scripts import gpu_binding

    def no_egl():
        raise gpu_binding.GpuBindingError("no libEGL.so.1")

    monkeypatch.setattr(gpu_binding, "egl_devices", no_egl)
    assert "failed: no libEGL.so.1" in bind_from_environment(bpy, 3)
