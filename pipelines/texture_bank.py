"""Where a root keeps its texture bank, and how the driver and the workers open the same one.

The shapes manifest stores the bank's description; every worker rebuilds the bank from it and
reads or fills the cache under ROOT/textures, so a cluster with a shared root shares one cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zeroverse.textures import DEFAULT_TEXTURE_SIZE, TextureBank, TextureBankConfig, prepare_folder_bank

FOLDER_CACHE = Path("textures") / "folder"


def prepare_bank(root: Path, folder: str | None, size: int, resolution: int = DEFAULT_TEXTURE_SIZE) -> TextureBank:
    """Driver side: the procedural bank (textures made lazily by whoever needs them first), or a
    user's image folder decoded once into ROOT/textures/folder."""
    root = Path(root)
    if folder is None:
        return TextureBank(TextureBankConfig(seed=0, size=size, resolution=resolution), cache_dir=root)
    cache = root / FOLDER_CACHE
    prepare_folder_bank(folder, str(cache), resolution=resolution)
    return TextureBank(TextureBankConfig(resolution=resolution), cache_dir=cache, folder=folder)


def open_bank(description: dict[str, Any], root: Path) -> TextureBank:
    """Worker side: the bank that `description` (TextureBank.describe()) names."""
    root = Path(root)
    kind = description.get("kind", "procedural")
    if kind == "procedural":
        config = TextureBankConfig(
            seed=description.get("seed", 0),
            size=description.get("size", 1024),
            resolution=description.get("resolution", DEFAULT_TEXTURE_SIZE),
        )
        return TextureBank(config, cache_dir=root)
    if kind == "folder":
        return TextureBank(
            TextureBankConfig(resolution=description["resolution"]), cache_dir=root / FOLDER_CACHE, folder=description["folder"]
        )
    raise ValueError(f"unknown texture bank kind {kind!r} in the shapes manifest")
