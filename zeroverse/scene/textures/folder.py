"""Folder banks: a user's image folder decoded once into .npy files, then read without PIL.

:func:`prepare_folder_bank` (needs PIL, imported when called) writes ``cache_dir/<i>.npy`` and,
last, ``index.json``; :class:`FolderTextures` reads only those, so Blender's Python can use it.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zeroverse.scene.files import write_npy, write_atomically
from zeroverse.scene.textures.generators import DEFAULT_TEXTURE_SIZE, check_resolution

if TYPE_CHECKING:
    from zeroverse.scene.textures.bank import TextureBankConfig

UNKNOWN_LICENCE = "unknown (user-supplied: check before redistributing)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FOLDER_INDEX = "index.json"


class FolderTextures:
    """The textures of a :class:`~zeroverse.scene.textures.TextureBank` made from an image folder:
    reads the cache that :func:`prepare_folder_bank` wrote to ``cache_dir``."""

    bank_hash: str | None = None
    presets_source: str | None = None

    def __init__(self, config: TextureBankConfig, cache_dir: str | Path | None, folder: str) -> None:
        if cache_dir is None:
            raise ValueError(
                f"a folder bank ({folder!r}) reads the cache that prepare_folder_bank writes: "
                "run zeroverse.scene.textures.prepare_folder_bank(folder, cache_dir) and pass that "
                "cache_dir"
            )
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.index = read_folder_index(self.cache_dir, folder)
        if self.index["resolution"] != config.resolution:
            raise ValueError(
                f"folder bank cache {str(self.cache_dir)!r} holds "
                f"{self.index['resolution']} px textures but the config asks for "
                f"{config.resolution}: re-run prepare_folder_bank(folder, cache_dir, "
                f"resolution={config.resolution}) into another cache_dir, or change the config"
            )
        self.size = len(self.index["images"])

    def load(self, texture_id: int) -> np.ndarray:
        path = self.cache_dir / self.index["images"][texture_id]["npy"]
        try:
            return np.load(path)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"folder bank cache file {str(path)!r} is missing or unreadable ({exc}): re-run "
                "zeroverse.scene.textures.prepare_folder_bank(folder, cache_dir)"
            ) from exc

    def licence(self, texture_id: int) -> str:
        return self.index["images"][texture_id]["licence"]

    def describe(self) -> dict:
        licences: dict[str, int] = {}
        for entry in self.index["images"]:
            licences[entry["licence"]] = licences.get(entry["licence"], 0) + 1
        return {
            "kind": "folder",
            "folder": self.index["folder"],
            "seed": self.config.seed,
            "size": self.size,
            "resolution": self.index["resolution"],
            "presets_hash": None,
            "index_sha256": self.index["sha256"],
            "licences": licences,
        }


def read_folder_index(cache_dir: Path, folder: str) -> dict:
    """``cache_dir/index.json`` with its own sha256 added; ValueError names the fix."""
    path = cache_dir / FOLDER_INDEX
    try:
        raw = path.read_bytes()
        index = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"no readable {FOLDER_INDEX} in {str(cache_dir)!r} ({exc}): run "
            f"zeroverse.scene.textures.prepare_folder_bank({folder!r}, {str(cache_dir)!r}) first"
        ) from exc
    index["sha256"] = hashlib.sha256(raw).hexdigest()
    return index


def _folder_licences(folder: Path, names: list[str]) -> dict[str, str]:
    """Licence per file: licences.json entry, else its "*" entry, else LICENSE's first line."""
    fallback = UNKNOWN_LICENCE
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt"):
        path = folder / name
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
            first = next((ln.lstrip("# ") for ln in lines if ln), "")
            if first:
                fallback = f"{first} (from {name})"
            break
    table: dict = {}
    path = folder / "licences.json"
    if path.is_file():
        try:
            table = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{str(path)!r} is not valid JSON ({exc}): fix or remove it") from exc
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise ValueError(
                f'{str(path)!r} must map file names (or "*" for all files) to licence strings'
            )
    default = table.get("*", fallback)
    return {name: table.get(name, default) for name in names}


def _to_rgb(image):
    """A PIL image of any mode -> RGB, scaling 16/32-bit greys instead of clipping them."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
        grey = np.clip(grey / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite onto mid grey rather than black so transparent texels stay neutral.
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def prepare_folder_bank(
    folder: str, cache_dir: str, resolution: int = DEFAULT_TEXTURE_SIZE
) -> dict:
    """Decode every image directly in ``folder`` into a cache a :class:`TextureBank` can read.

    Images (png, jpg, jpeg, webp, bmp, tif) are taken in sorted file-name order, centre-cropped
    to a square and resized to ``resolution``; texture i is saved as ``cache_dir/<i>.npy``
    (uint8 [R, R, 3]). ``index.json`` (written last) records file names, licences (from the
    folder's licences.json or LICENSE file) and the sources' sha256. Returns the index.
    Needs PIL. Raises ``ValueError`` naming the folder (or file) and the fix.
    """
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise ValueError("prepare_folder_bank needs Pillow: pip install pillow") from exc
    resolution = check_resolution(resolution)
    source = Path(folder)
    if not source.is_dir():
        raise ValueError(
            f"texture folder {folder!r} does not exist or is not a directory: "
            "pass a folder that holds the images directly"
        )
    try:
        names = sorted(
            p.name for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    except OSError as exc:
        raise ValueError(
            f"texture folder {folder!r} is unreadable ({exc}): check its permissions"
        ) from exc
    if not names:
        raise ValueError(
            f"texture folder {folder!r} has no images ({', '.join(IMAGE_SUFFIXES)}): put the "
            "colour maps directly in it (subfolders are not searched)"
        )
    licences = _folder_licences(source, names)
    out = Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    # An old index would vouch for .npy files that this run is overwriting.
    (out / FOLDER_INDEX).unlink(missing_ok=True)
    entries = []
    for i, name in enumerate(names):
        path = source / name
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = _to_rgb(ImageOps.exif_transpose(opened))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(
                f"image {str(path)!r} in texture folder {folder!r} cannot be decoded ({exc}): "
                "convert it to PNG or JPEG, or move it out of the folder"
            ) from exc
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        square = image.crop((left, top, left + side, top + side))
        square = square.resize((resolution, resolution), Image.LANCZOS)
        npy = f"{i:06d}.npy"
        pixels = np.asarray(square, dtype=np.uint8).reshape(resolution, resolution, 3)
        write_npy(out / npy, pixels)
        entries.append(
            {
                "npy": npy,
                "file": name,
                "width": w,
                "height": h,
                "sha256": hashlib.sha256(data).hexdigest(),
                "licence": licences[name],
            }
        )
    index = {
        "version": 1,
        "folder": str(source.resolve()),
        "resolution": resolution,
        "count": len(entries),
        "images": entries,
    }
    write_atomically(out / FOLDER_INDEX, json.dumps(index, indent=1).encode())
    return index
