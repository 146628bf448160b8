"""The manifest of a shard directory: which shards exist, under which config and seed (the
root's identity), and which items failed; resume, verify and version archiving.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from zeroverse import code_version
from zeroverse.scene.conventions import SCHEMA_VERSION
from zeroverse.scene.files import fsync_dir
from zeroverse.store.fs import Location, atomic_write_text, file_size, is_local, join, read_bytes, resolve, sha256_file
from zeroverse.store.shards import KINDS, MANIFEST_NAME, SHARD_FILE, shard_name, shard_path

class ManifestSaveError(OSError):
    """The manifest could not be rewritten (disk full, read-only, quota). The previous manifest is
    untouched, so the root is exactly as it was before the shard whose record was being added."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass
class Manifest:
    """What a stage directory holds. Readers trust only this file."""

    kind: str
    seed: int
    config: dict[str, Any]
    config_hash: str
    shards: list[dict[str, Any]]
    failures: list[dict[str, Any]]

    @staticmethod
    def path(directory: Location) -> Location:
        return join(directory, MANIFEST_NAME)

    @classmethod
    def load(cls, directory: Location) -> "Manifest | None":
        path = cls.path(directory)
        if file_size(path) is None:
            return None
        try:
            data = json.loads(read_bytes(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); it was damaged outside zeroverse") from err
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path} has schema_version {data.get('schema_version')!r}; this zeroverse reads {SCHEMA_VERSION}. "
                "Use a new --root or the zeroverse version that made it."
            )
        manifest = cls(data["kind"], data["seed"], data["config"], data["config_hash"], data["shards"], data.get("failures", []))
        manifest._check_files(path)
        return manifest

    def _check_files(self, path: Location) -> None:
        """Refuses the whole manifest if an entry names anything but a shard file in its own folder
        (a path like '../../x' would otherwise be read, and deleted when the shard is replaced).
        A manifest of the wrong kind is left to its readers, which say so in their own terms."""
        for i, shard in enumerate(self.shards):
            name = shard.get("file") if isinstance(shard, dict) else None
            if not (isinstance(name, str) and SHARD_FILE.fullmatch(name)):
                first = shard.get("first", "?") if isinstance(shard, dict) else "?"
                example = shard_name(self.kind if self.kind in KINDS else "shapes", 0, 7)
                raise ValueError(
                    f"{path}: shard entry {i} (first shape {first}) names the file {name!r}, which is not a "
                    f"shard file name (like {example!r}); the manifest was edited or damaged outside zeroverse, and "
                    "nothing was read or deleted. Restore that entry's file name, or delete the entry (its shapes are "
                    "then made again on the next run), or use a new --root"
                )

    def save(self, directory: Location) -> None:
        self.shards.sort(key=lambda s: s["first"])
        self.failures.sort(key=lambda f: f["shape_id"])
        body = {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "code_version": code_version(),
            "seed": self.seed,
            "config_hash": self.config_hash,
            "config": self.config,
            "num_shapes": sum(len(s["shape_ids"]) for s in self.shards),
            "shards": self.shards,
            "failures": self.failures,
        }
        path = self.path(directory)
        try:
            atomic_write_text(path, json.dumps(body, indent=1, sort_keys=True) + "\n")
        except OSError as err:
            raise ManifestSaveError(
                err.errno,
                f"could not save {path} ({err.strerror or err}); the previous manifest is unchanged. Free space "
                "or fix the permissions, then rerun the same command to resume",
            ) from err

    def shape_ids(self) -> list[int]:
        return sorted(i for s in self.shards for i in s["shape_ids"])

    def shard_for(self, first: int) -> dict[str, Any] | None:
        for shard in self.shards:
            if shard["first"] == first:
                return shard
        return None

    def replace_shard(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Adds a shard record; returns the record it replaced (same first id), if any."""
        old = self.shard_for(record["first"])
        if old is not None:
            self.shards.remove(old)
        self.shards.append(record)
        return old


def listed_file_problem(directory: Location, shard: dict[str, Any], verify: bool = False) -> str | None:
    """Why the file of a listed shard cannot be trusted (missing, another size, with `verify`
    another sha256), or None. Without `verify` it costs one stat: cheap enough for every rerun."""
    path = shard_path(directory, shard)
    size = file_size(path)
    if size is None:
        return "listed in the manifest but missing"
    if "bytes" in shard and size != shard["bytes"]:
        return f"{size} bytes, the manifest recorded {shard['bytes']} (truncated or replaced)"
    if verify and "sha256" in shard and sha256_file(path) != shard["sha256"]:
        return "content differs from the manifest's sha256 (corrupt or replaced)"
    return None


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# Keys that older versions put into a config identity although they fix no byte of any shard:
# the absolute path of the installed texture presets (their content hash is kept). A root made
# then still resumes from another checkout or venv path: they are left out when it is compared.
_NOT_IDENTITY = (("textures", "presets_source"),)


def _identity_part(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))  # a deep copy
    for *parents, key in _NOT_IDENTITY:
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return config


def same_identity(existing: Manifest, config: dict[str, Any]) -> bool:
    """Whether a root's manifest was made with `config` (its recorded hash, or the hash of its
    config without the keys in _NOT_IDENTITY)."""
    digest = config_digest(config)
    return existing.config_hash == digest or config_digest(_identity_part(existing.config)) == digest


def open_manifest(directory: Location, kind: str, seed: int, config: dict[str, Any]) -> Manifest:
    """The manifest of `directory`, created (in memory) if absent. A root made with another seed
    or config is refused: mixing them would silently change the dataset. `archive_version` keeps
    the old one aside when a new version is asked for explicitly."""
    digest = config_digest(config)
    existing = Manifest.load(directory)
    if existing is None:
        return Manifest(kind, seed, config, digest, [], [])
    if existing.kind != kind:
        raise ValueError(f"{directory} holds {existing.kind!r} shards, not {kind!r}")
    if existing.seed != seed and kind == "views":  # render takes its seed from the shapes
        raise ValueError(
            f"{directory} was rendered from shapes of seed {existing.seed}, but the shapes now have seed "
            f"{seed}. Pass --new-version to keep the old views under ROOT/versions/ and render anew, "
            "or render into a new --root. Nothing was changed."
        )
    if existing.seed != seed:
        raise ValueError(
            f"{directory} was made with --seed {existing.seed}, not {seed}. Rerun with --seed {existing.seed} "
            "to resume or extend it, pass --new-version to keep it under ROOT/versions/ and start anew, "
            "or pass a new --root. Nothing was changed."
        )
    if not same_identity(existing, config):
        changed = _differences(_identity_part(existing.config), config)
        raise ValueError(
            f"{directory} was made with another config ({'; '.join(changed[:6])}). Rerun with the "
            "original config to resume or extend it, pass --new-version to keep it under ROOT/versions/ "
            "and start anew, or pass a new --root. Nothing was changed."
        )
    return existing


def differs(directory: Location, seed: int, config: dict[str, Any]) -> bool:
    """True when `directory` holds a manifest made with another seed or config."""
    existing = Manifest.load(directory)
    return existing is not None and (existing.seed != seed or not same_identity(existing, config))


VERSIONS = "versions"


def archive_version(root: Location, stages: tuple[str, ...]) -> Path | None:
    """Moves ROOT/<stage> for each of `stages` that exists to ROOT/versions/<k>/<stage>, k the next
    free number, and returns ROOT/versions/<k> (itself a root that validate and the datasets
    read), or None when there was nothing to move. One rename per stage, nothing copied or
    deleted. Pass views before shapes: a crash between the renames then leaves shapes without
    views, never views whose shapes are gone."""
    if not is_local(root):
        raise ValueError(
            f"--new-version moves directories, which {root} (not a local or POSIX filesystem) cannot do "
            "atomically: pass a new --root for the new version instead"
        )
    root = Path(resolve(root)[1])
    present = [stage for stage in stages if (root / stage).exists()]
    if not present:
        return None
    versions = root / VERSIONS
    taken = [int(p.name) for p in versions.glob("*") if p.name.isdigit()] if versions.is_dir() else []
    target = versions / str(max(taken, default=0) + 1)
    target.mkdir(parents=True)
    for stage in present:
        os.rename(root / stage, target / stage)
    fsync_dir(root)
    return target


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable 'key: old -> new' lines for nested config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: root has {old!r}, asked {new!r}"]
