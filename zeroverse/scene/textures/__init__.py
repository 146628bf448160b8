"""Deterministic procedural texture bank (numpy and the standard library only).

A texture is a pure function of ``(bank_seed, texture_id)``: its random stream is
``np.random.default_rng(np.random.SeedSequence([bank_seed, texture_id]))``, whose first draw picks
a generator kind (weights from ``textures/presets.toml``) and whose later draws pick that
generator's parameters and random lattices. No draw depends on the resolution, so one texture id
is the same pattern at 32 and at 1024 pixels. Every generator is periodic on the unit tile, so the
textures wrap without visible seams, and pixels pass only through IEEE-exact operations, so the
same texture is the same bytes on every machine, inside Blender or out.

The package, by concern: ``presets`` (the TOML and its validation), ``noise`` (exact-arithmetic
draws, palettes and periodic noise), ``generators`` (the 11 kinds and ``generate_texture``),
``bank`` (``TextureBank`` and its disk and memory caches), ``folder`` (banks made from a user's
image folder), ``description`` (a recorded bank description, read back), ``sheet`` (contact
sheets). This module is their public interface.

It runs inside Blender's embedded Python, where PIL is not available: only
:func:`prepare_folder_bank` needs PIL, and imports it when called.

Example::

    >>> generate_texture(bank_seed=0, texture_id=3, resolution=64).shape
    (64, 64, 3)
    >>> texture_kind(0, 3) in KINDS
    True
"""

from __future__ import annotations

from zeroverse.scene.textures.bank import (
    DEFAULT_BANK_SIZE,
    PROCEDURAL_LICENCE,
    TextureBank,
    TextureBankConfig,
    default_cache_root,
)
from zeroverse.scene.textures.description import BankDescription
from zeroverse.scene.textures.folder import IMAGE_SUFFIXES, UNKNOWN_LICENCE, prepare_folder_bank
from zeroverse.scene.textures.generators import (
    DEFAULT_TEXTURE_SIZE,
    GENERATOR_VERSION,
    KINDS,
    MIN_RESOLUTION,
    generate_texture,
    texture_kind,
)
from zeroverse.scene.textures.presets import load_presets
from zeroverse.scene.textures.sheet import contact_sheet

__all__ = [
    "DEFAULT_BANK_SIZE",
    "DEFAULT_TEXTURE_SIZE",
    "GENERATOR_VERSION",
    "IMAGE_SUFFIXES",
    "KINDS",
    "MIN_RESOLUTION",
    "PROCEDURAL_LICENCE",
    "UNKNOWN_LICENCE",
    "BankDescription",
    "TextureBankConfig",
    "TextureBank",
    "generate_texture",
    "texture_kind",
    "load_presets",
    "prepare_folder_bank",
    "contact_sheet",
    "default_cache_root",
]
