"""The manifest of a shard directory: which shards exist, under which config and seed (the
root's identity), and which items failed; resume, verify and version archiving.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from zeroverse import code_version
from zeroverse.scene.conventions import SCHEMA_VERSION
from zeroverse.scene.files import fsync_dir
from zeroverse.store.fs import Location, atomic_write_text, delete, file_size, is_local, join, read_bytes, resolve, sha256_file
from zeroverse.store.shards import KINDS, MANIFEST_NAME, SHARD_FILE, WrittenShard, shard_name, shard_path


@dataclass(frozen=True)
class ShardRecord:
    """A committed shard as the manifest lists it. `failed`: shape ids of the range that were
    given to the shard but are not in it (their reasons are in the manifest's failures).
    `bytes`/`sha256` are None only in roots made before they were recorded; `seconds` is None
    where the writer did not time the shard. Keys this version does not know stay in `extra`
    and are written back unchanged."""

    file: str
    first: int
    last: int
    shape_ids: tuple[int, ...]
    rows: int
    bytes: int | None = None
    sha256: str | None = None
    failed: tuple[int, ...] = ()
    seconds: float | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    KNOWN = ("file", "first", "last", "shape_ids", "rows", "bytes", "sha256", "failed", "seconds")

    @classmethod
    def of(cls, written: WrittenShard, first: int, last: int, shape_ids: Iterable[int], failed: Iterable[int] = (),
           seconds: float | None = None) -> "ShardRecord":  # fmt: skip
        """The record of a shard a writer just put in place."""
        return cls(written.file, first, last, tuple(int(i) for i in shape_ids), written.rows, written.bytes, written.sha256,
                   tuple(int(i) for i in failed), seconds)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "first": self.first, "last": self.last, "shape_ids": list(self.shape_ids),
                               "rows": self.rows, "failed": list(self.failed)}  # fmt: skip
        for key in ("bytes", "sha256", "seconds"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ShardRecord":
        return cls(
            file=data["file"],
            first=int(data["first"]),
            last=int(data["last"]),
            shape_ids=tuple(int(i) for i in data["shape_ids"]),
            rows=int(data["rows"]),
            bytes=data.get("bytes"),
            sha256=data.get("sha256"),
            failed=tuple(int(i) for i in data.get("failed") or ()),
            seconds=data.get("seconds"),
            extra=tuple(sorted((k, v) for k, v in data.items() if k not in cls.KNOWN)),
        )

    def __getitem__(self, key: str) -> Any:
        """Read-only access by JSON key (`shard["file"]`), for readers written against the JSON form."""
        value = self.to_json()[key]
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_json()


@dataclass(frozen=True)
class Failure:
    """A failure ledger entry: a shape that is missing from its stage, and why."""

    shape_id: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"shape_id": self.shape_id, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Failure":
        return cls(int(data["shape_id"]), str(data["reason"]))

    def __getitem__(self, key: str) -> Any:
        """Read-only access by JSON key, as for ShardRecord."""
        return self.to_json()[key]

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
    shards: list[ShardRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

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
        shards = data["shards"]
        cls._check_files(path, data["kind"], shards)
        try:
            records = [ShardRecord.from_json(s) for s in shards]
            failures = [Failure.from_json(f) for f in data.get("failures", [])]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: a shard or failure entry lacks a field or has a wrong type ({err!r}); it was damaged outside zeroverse") from err
        return cls(data["kind"], data["seed"], data["config"], data["config_hash"], records, failures)

    @staticmethod
    def _check_files(path: Location, kind: str, shards: list[Any]) -> None:
        """Refuses the whole manifest if an entry names anything but a shard file in its own folder
        (a path like '../../x' would otherwise be read, and deleted when the shard is replaced).
        A manifest of the wrong kind is left to its readers, which say so in their own terms."""
        for i, shard in enumerate(shards):
            name = shard.get("file") if isinstance(shard, dict) else None
            if not (isinstance(name, str) and SHARD_FILE.fullmatch(name)):
                first = shard.get("first", "?") if isinstance(shard, dict) else "?"
                example = shard_name(kind if kind in KINDS else "shapes", 0, 7)
                raise ValueError(
                    f"{path}: shard entry {i} (first shape {first}) names the file {name!r}, which is not a "
                    f"shard file name (like {example!r}); the manifest was edited or damaged outside zeroverse, and "
                    "nothing was read or deleted. Restore that entry's file name, or delete the entry (its shapes are "
                    "then made again on the next run), or use a new --root"
                )

    def save(self, directory: Location) -> None:
        self.shards.sort(key=lambda s: s.first)
        self.failures.sort(key=lambda f: f.shape_id)
        body = {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "code_version": code_version(),
            "seed": self.seed,
            "config_hash": self.config_hash,
            "config": self.config,
            "num_shapes": sum(len(s.shape_ids) for s in self.shards),
            "shards": [s.to_json() for s in self.shards],
            "failures": [f.to_json() for f in self.failures],
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
        return sorted(i for s in self.shards for i in s.shape_ids)

    def shard_for(self, first: int) -> ShardRecord | None:
        for shard in self.shards:
            if shard.first == first:
                return shard
        return None

    def replace_shard(self, record: ShardRecord) -> ShardRecord | None:
        """Adds a shard record; returns the record it replaced (same first id), if any."""
        old = self.shard_for(record.first)
        if old is not None:
            self.shards.remove(old)
        self.shards.append(record)
        return old

    def commit(self, directory: Location, record: ShardRecord, given: Iterable[int], failures: Iterable[Failure] = ()) -> None:
        """Lists a landed shard (the manifest is written last), then drops the file it supersedes.
        The ledger is rewritten for the shapes the shard was `given` only: others of its range may
        be ledgered for another reason (a corrupt input shard) and stay so."""
        self.set_failures(given, failures)
        old = self.replace_shard(record)
        self.save(directory)
        if old is not None and old.file != record.file:
            delete(shard_path(directory, old))  # a shard name only: never a path a hand-edited manifest made up

    def set_failures(self, shape_ids: Iterable[int], failures: Iterable[Failure]) -> None:
        """Replaces the ledger entries of `shape_ids` by `failures`; the caller saves."""
        ids = set(shape_ids)
        self.failures = [f for f in self.failures if f.shape_id not in ids] + list(failures)

    def ledger(self, directory: Location, shape_ids: Iterable[int], reason: str) -> list[Failure]:
        """Records shapes that could not be made at all (their shard failed) and saves. Shapes an
        older listed shard of the same range still holds stay listed and are not failures. Raises
        ManifestSaveError if the manifest cannot be written (the previous one is left as it was)."""
        ids = sorted(set(shape_ids))
        listed = {i for s in self.shards for i in s.shape_ids}
        entries = [Failure(i, reason) for i in ids if i not in listed]
        self.set_failures(ids, entries)
        self.save(directory)
        return entries


def listed_file_problem(directory: Location, shard: ShardRecord, verify: bool = False) -> str | None:
    """Why the file of a listed shard cannot be trusted (missing, another size, with `verify`
    another sha256), or None. Without `verify` it costs one stat: cheap enough for every rerun."""
    path = shard_path(directory, shard)
    size = file_size(path)
    if size is None:
        return "listed in the manifest but missing"
    if shard.bytes is not None and size != shard.bytes:
        return f"{size} bytes, the manifest recorded {shard.bytes} (truncated or replaced)"
    if verify and shard.sha256 is not None and sha256_file(path) != shard.sha256:
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


def views_per_shape(config: dict[str, Any]) -> int | None:
    """Views per shape that the rig recorded in a views manifest's config asks for (None: no rig)."""
    from zeroverse.scene.cameras import EVAL_INPUT_AZIMUTHS, EVAL_TARGET_AZIMUTHS, EVAL_TARGET_ELEVATIONS

    rig = config.get("rig") if isinstance(config, dict) else None
    if not isinstance(rig, dict) or "num_views" not in rig:
        return None
    per_ring = int(rig.get("eval_targets_per_ring", EVAL_TARGET_AZIMUTHS))
    n = len(EVAL_INPUT_AZIMUTHS) + per_ring * len(EVAL_TARGET_ELEVATIONS) if rig.get("kind") == "eval" else int(rig["num_views"])
    return n + (1 if rig.get("bev") else 0)
