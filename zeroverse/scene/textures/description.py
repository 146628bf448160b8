"""The texture-bank description a root records (TextureBank.describe()), read back.

The shapes manifest stores which bank a root's shapes use; the render workers and the exporters
reopen that bank from it. This is the one reader of that description.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeroverse.scene.textures.bank import DEFAULT_BANK_SIZE, TextureBank, TextureBankConfig
from zeroverse.scene.textures.generators import DEFAULT_TEXTURE_SIZE

BANK_KINDS = ("procedural", "folder")


@dataclass(frozen=True)
class BankDescription:
    """Which bank a root uses: kind, seed, size, resolution, the image folder of a folder bank,
    and the presets' hash (and, in roots written by older versions, their path)."""

    kind: str = "procedural"
    seed: int = 0
    size: int = DEFAULT_BANK_SIZE
    resolution: int = DEFAULT_TEXTURE_SIZE
    folder: str | None = None
    presets_hash: str | None = None
    presets_source: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, default_size: int | None = None) -> BankDescription:
        """Reads a recorded description; missing or empty fields take the defaults (the size:
        `default_size`, e.g. the recipe's texture_bank_size, else DEFAULT_BANK_SIZE). ValueError
        names an unknown kind or a folder bank without its folder."""
        data = dict(data or {})
        kind = data.get("kind") or "procedural"
        if kind not in BANK_KINDS:
            raise ValueError(
                f"unknown texture bank kind {kind!r} in the shapes manifest: expected one of "
                f"{', '.join(BANK_KINDS)} (was the root written by a newer zeroverse?)"
            )
        folder = data.get("folder")
        if kind == "folder" and not folder:
            raise ValueError("the shapes manifest names a folder texture bank but not its folder: the manifest is damaged")
        return cls(
            kind=kind,
            seed=int(data.get("seed") or 0),
            size=int(data.get("size") or default_size or DEFAULT_BANK_SIZE),
            resolution=int(data.get("resolution") or DEFAULT_TEXTURE_SIZE),
            folder=folder,
            presets_hash=data.get("presets_hash"),
            presets_source=data.get("presets_source"),
        )

    def open(self, cache_dir: str | os.PathLike | None) -> TextureBank:
        """The bank described: a procedural one caching under `cache_dir` (None: the node's
        default cache), or a folder bank reading the cache prepare_folder_bank wrote there."""
        if self.kind == "folder":
            return TextureBank(self._config(None), cache_dir=cache_dir, folder=self.folder)
        # A presets file recorded by an older version is used when it exists here; otherwise the
        # bundled presets (compare presets_hash to bank.describe()'s to know whether they match).
        presets = self.presets_source
        if presets is not None and not Path(presets).is_file():
            presets = None
        return TextureBank(self._config(presets), cache_dir=cache_dir)

    def _config(self, presets: str | None) -> TextureBankConfig:
        return TextureBankConfig(seed=self.seed, size=self.size, resolution=self.resolution, presets=presets)
