"""Binding a Blender worker process to one GPU of a node: the single place where it happens.

Why: background bpy makes its OpenGL context with `eglGetDisplay(EGL_DEFAULT_DISPLAY)`
(GHOST_ContextEGL), and NVIDIA's default EGL display is the first GPU whatever
CUDA_VISIBLE_DEVICES says (measured: a Blender started with CUDA_VISIBLE_DEVICES=1 rendered
EEVEE on GPU 0 of a 2-GPU H200 node), so every EEVEE worker of a node drew on GPU 0. Blender
offers no setting for the EGL device, and bpy loads EGL through its static libepoxy (dlopen +
dlsym on a private handle), so an LD_PRELOAD of eglGetDisplay is never seen.

How: libepoxy calls eglGetDisplay through a function pointer, `epoxy_eglGetDisplay`, in bpy's
data segment (bpy 5.0.1 keeps its ELF symbol table). After `import bpy` and before the first
render (background mode starts the GPU lazily, at the first render), `bind_egl_device` opens the
EGL display of the wanted device (EGL_EXT_device_enumeration + eglGetPlatformDisplayEXT) through
ctypes and points that pointer at a two-instruction stub returning this display. The device is
matched to nvidia-smi's numbering by UUID (EGL_EXT_device_persistent_id), else by CUDA id, else
by EGL order. x86-64 Linux only; anywhere else, or if anything fails, the worker renders on the
default device and its shards say so. ZEROVERSE_GPU_BINDING=off turns the patch off.

Two hooks, both called by every render worker:
- `bind_render_device(index)`: in the worker BEFORE bpy is imported (ViewShardWriter calls it
  first thing): CUDA_VISIBLE_DEVICES=index, which binds anything CUDA-based (Cycles on GPU).
- `configure_render_device(index, engine)`: after bpy is imported and the scene is set up,
  before the first render (BlenderRenderer calls it): the EGL binding for EEVEE / Workbench.

Imports only the standard library (ctypes) at import time; runs inside Blender's own Python.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import struct
import subprocess
import sys

EGL_PLATFORM_DEVICE_EXT = 0x313F
EGL_CUDA_DEVICE_NV = 0x323A
EGL_DEVICE_UUID_EXT = 0x335C
EGL_EXTENSIONS = 0x3055

_KEEP: list = []  # the stubs must live as long as the process uses the GPU


class GpuBindingError(RuntimeError):
    """The device could not be bound; the message says why."""


def nvidia_uuid(index: int) -> str | None:
    """nvidia-smi's UUID of GPU `index` (physical numbering), or None without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(index):
            return parts[1]
    return None


def elf_symbols(path: str, names: list[str]) -> dict[str, int]:
    """Values of `names` in the ELF .symtab of `path`."""
    want = {n.encode(): n for n in names}
    found: dict[str, int] = {}
    with open(path, "rb") as f:
        header = f.read(64)
        (shoff,) = struct.unpack_from("<Q", header, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
        f.seek(shoff)
        sections = [struct.unpack("<IIQQQQIIQQ", f.read(shentsize)[:64]) for _ in range(shnum)]
        symtab = next((s for s in sections if s[1] == 2), None)  # SHT_SYMTAB
        if symtab is None:
            raise GpuBindingError(f"{path} has no symbol table (a stripped bpy build)")
        strtab = sections[symtab[6]]
        f.seek(strtab[4])
        strings = f.read(strtab[5])
        f.seek(symtab[4])
        symbols = f.read(symtab[5])
    lengths = {len(n) for n in want}
    for st_name, _info, _other, _shndx, value, _size in struct.iter_unpack("<IBBHQQ", symbols):
        end = strings.find(b"\0", st_name, st_name + max(lengths) + 1)
        if end - st_name in lengths:
            key = strings[st_name:end]
            if key in want and want[key] not in found:
                found[want[key]] = value
    return found


def bpy_extension(bpy) -> str:
    """Path of the loaded bpy extension module."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip()
                if path.endswith("/bpy/__init__.so") or "/bpy/__init__.cpython" in path:
                    return path
    except OSError:
        pass
    return getattr(getattr(bpy, "__spec__", None), "origin", None) or bpy.__file__


def egl_devices() -> tuple[list[dict], object]:
    """EGL devices with CUDA id and UUID, and eglGetPlatformDisplayEXT."""
    try:
        egl = ctypes.CDLL("libEGL.so.1")
    except OSError as err:
        raise GpuBindingError(f"no libEGL.so.1 ({err})") from None
    get_proc = egl.eglGetProcAddress
    get_proc.restype, get_proc.argtypes = ctypes.c_void_p, [ctypes.c_char_p]

    def fn(name, result, *args):
        address = get_proc(name.encode())
        return ctypes.CFUNCTYPE(result, *args)(address) if address else None

    query_devices = fn("eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                       ctypes.POINTER(ctypes.c_int))
    query_attrib = fn("eglQueryDeviceAttribEXT", ctypes.c_uint, ctypes.c_void_p, ctypes.c_int,
                      ctypes.POINTER(ctypes.c_ssize_t))
    query_string = fn("eglQueryDeviceStringEXT", ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
    query_binary = fn("eglQueryDeviceBinaryEXT", ctypes.c_uint, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                      ctypes.c_void_p, ctypes.POINTER(ctypes.c_int))
    platform_display = fn("eglGetPlatformDisplayEXT", ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p,
                          ctypes.c_void_p)
    if not query_devices or not platform_display:
        raise GpuBindingError("EGL lacks EGL_EXT_device_enumeration / EGL_EXT_platform_base")
    handles = (ctypes.c_void_p * 32)()
    count = ctypes.c_int(0)
    if not query_devices(32, handles, ctypes.byref(count)):
        raise GpuBindingError("eglQueryDevicesEXT failed")
    devices = []
    for i in range(count.value):
        d = {"egl_index": i, "handle": handles[i], "cuda": None, "uuid": None}
        extensions = (query_string(handles[i], EGL_EXTENSIONS) or b"").decode() if query_string else ""
        if query_attrib and "EGL_NV_device_cuda" in extensions:
            value = ctypes.c_ssize_t(-1)
            if query_attrib(handles[i], EGL_CUDA_DEVICE_NV, ctypes.byref(value)):
                d["cuda"] = value.value
        if query_binary and "EGL_EXT_device_persistent_id" in extensions:
            buf, size = (ctypes.c_ubyte * 16)(), ctypes.c_int(0)
            if query_binary(handles[i], EGL_DEVICE_UUID_EXT, 16, buf, ctypes.byref(size)) and size.value == 16:
                h = bytes(buf).hex()
                d["uuid"] = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        devices.append(d)
    return devices, platform_display


def bind_egl_device(bpy, index: int) -> dict:
    """Make this Blender's (not yet started) OpenGL context open on physical GPU `index`.
    Call after `import bpy`, before the first render. Returns what was chosen and how."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise GpuBindingError(f"binding needs x86-64 Linux, not {platform.system()} {platform.machine()}")
    devices, platform_display = egl_devices()
    if not devices:
        raise GpuBindingError("EGL lists no device")
    uuid = nvidia_uuid(index)
    pick, how = None, ""
    if uuid:
        pick = next((d for d in devices if d["uuid"] and d["uuid"].lower() == uuid.lower()), None)
        how = "uuid"
    if pick is None:
        pick = next((d for d in devices if d["cuda"] == index), None)
        how = "cuda id"
    if pick is None and index < len(devices):
        pick, how = devices[index], "egl order"
    if pick is None:
        raise GpuBindingError(f"no EGL device for GPU {index} among {len(devices)}")
    display = platform_display(EGL_PLATFORM_DEVICE_EXT, pick["handle"], None)
    if not display:
        raise GpuBindingError(f"eglGetPlatformDisplayEXT gave no display for GPU {index}")
    so = bpy_extension(bpy)
    symbols = elf_symbols(so, ["PyInit_bpy", "epoxy_eglGetDisplay"])
    if len(symbols) != 2:
        raise GpuBindingError(f"{so} lacks epoxy_eglGetDisplay: this bpy build cannot be bound")
    base = ctypes.cast(ctypes.CDLL(so).PyInit_bpy, ctypes.c_void_p).value - symbols["PyInit_bpy"]
    stub = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    stub.write(b"\x48\xb8" + struct.pack("<Q", display) + b"\xc3")  # movabs rax, display; ret
    _KEEP.append(stub)
    ctypes.c_void_p.from_address(base + symbols["epoxy_eglGetDisplay"]).value = ctypes.addressof(
        ctypes.c_char.from_buffer(stub))
    return {"gpu": index, "egl_index": pick["egl_index"], "matched_by": how, "uuid": uuid,
            "egl_devices": len(devices)}


def bind_from_environment(bpy, index: int | None) -> str:
    """The worker's entry: bind to `index` when given (None: leave Blender's default), and
    describe the outcome for the shard metadata. Never raises: an unbindable machine renders on
    its default device and says so."""
    if index is None:
        return "default device"
    if os.environ.get("ZEROVERSE_GPU_BINDING", "epoxy") == "off":
        return f"default device (binding to GPU {index} turned off)"
    try:
        info = bind_egl_device(bpy, index)
    except (GpuBindingError, OSError, ValueError) as err:
        return f"default device (binding to GPU {index} failed: {err})"
    return f"GPU {info['gpu']} (EGL device {info['egl_index']}, by {info['matched_by']})"


def bind_render_device(index: int | None) -> str:
    """Binds this process to physical GPU `index` (zeroverse.scene.gpu_devices) before bpy loads, as
    far as the environment can; None: no GPU. Returns a short description for the metadata."""
    if index is None:
        return "none"
    late = "bpy" in sys.modules  # too late for anything read when Blender starts
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    # NVIDIA's GL driver spins a core while it waits for the GPU. Sleeping instead gave the same
    # EEVEE views/s with 0.25 instead of 0.44 core-seconds per view (512², 12 processes, H200),
    # cores that a node's other workers can use. The user's own setting wins.
    os.environ.setdefault("__GL_YIELD", "USLEEP")
    return f"CUDA_VISIBLE_DEVICES={index}" + (" (set after bpy was imported)" if late else "")


def configure_render_device(index: int | None, engine: str) -> str:
    """After bpy is imported, before the first render: EEVEE and Workbench draw through EGL,
    which CUDA_VISIBLE_DEVICES does not reach, so their context is bound here. Returns what was
    done (for the metadata)."""
    if index is None or engine not in ("eevee", "workbench"):
        return "not needed"
    import bpy

    return bind_from_environment(bpy, index)


__all__ = ["GpuBindingError", "bind_egl_device", "bind_from_environment", "bind_render_device",
           "configure_render_device", "egl_devices", "nvidia_uuid"]
