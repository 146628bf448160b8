"""Where a root keeps its texture bank, and how the driver and the workers open the same one.

The shapes manifest stores the bank's description; every worker rebuilds the bank from it and
reads or fills the cache under ROOT/textures, so a cluster with a shared root shares one cache
(an object-store root: each node fills its own local cache, with the same textures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zeroverse.store.fs import Location, is_uri
from zeroverse.scene.textures import DEFAULT_TEXTURE_SIZE, BankDescription, TextureBank, TextureBankConfig, prepare_folder_bank

FOLDER_CACHE = Path("textures") / "folder"


def _cache_root(root: Location) -> Path | None:
    """ROOT itself for a local root (its texture cache is shared through the filesystem); None
    (the node's own cache: $ZEROVERSE_CACHE or ~/.cache/zeroverse) for an object-store root.
    Procedural textures are a function of the bank's seed, so every node's cache holds the same."""
    return Path(root) if not is_uri(root) else None


def prepare_bank(root: Location, folder: str | None, size: int, resolution: int = DEFAULT_TEXTURE_SIZE) -> TextureBank:
    """Driver side: the procedural bank (textures made lazily by whoever needs them first), or a
    user's image folder decoded once into ROOT/textures/folder."""
    if folder is None:
        return TextureBank(TextureBankConfig(seed=0, size=size, resolution=resolution), cache_dir=_cache_root(root))
    if is_uri(root):
        raise ValueError(
            f"--textures with --root {root}: the decoded folder cache lives in ROOT/textures/folder, which must be a "
            "local or shared POSIX path; use such a root, or the procedural bank (no --textures)"
        )
    cache = Path(root) / FOLDER_CACHE
    prepare_folder_bank(folder, str(cache), resolution=resolution)
    return TextureBank(TextureBankConfig(resolution=resolution), cache_dir=cache, folder=folder)


def open_bank(description: dict[str, Any], root: Location) -> TextureBank:
    """Worker side: the bank that `description` (TextureBank.describe()) names."""
    bank = BankDescription.from_json(description)
    if bank.kind == "folder":
        if is_uri(root):
            raise ValueError(f"a folder texture bank needs a local or POSIX --root, not {root}")
        return bank.open(Path(root) / FOLDER_CACHE)
    return bank.open(_cache_root(root))
