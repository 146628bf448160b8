"""`zeroverse validate`: checks every shard a root's manifests list, naming each problem.

Checks are exhaustive rather than sampled: a dataset that trains for days deserves one full read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from zeroverse.store.fs import Location, exists, is_dir, join, list_files, read_table, sha256_file
from zeroverse.store.manifest import Manifest, ShardRecord, views_per_shape
from zeroverse.store.shards import SHAPE_SCHEMA, VIEW_SCHEMA, shard_path


@dataclass
class ValidationReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # harmless findings (ignored stray files)
    shards: int = 0
    shapes: int = 0
    views: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _open_checked(directory: Location, shard: ShardRecord, schema, report: ValidationReport):
    path = shard_path(directory, shard)
    if not exists(path):
        report.problems.append(f"{path}: listed in the manifest but missing")
        return None
    if shard.sha256 is not None and sha256_file(path) != shard.sha256:
        report.problems.append(f"{path}: content differs from the manifest's sha256 (corrupt or replaced)")
        return None
    try:
        table = read_table(path)
    except Exception as err:  # noqa: BLE001 - any read failure is a finding
        report.problems.append(f"{path}: unreadable Parquet ({type(err).__name__}: {err})")
        return None
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        report.problems.append(f"{path}: missing columns {missing}")
        return None
    if table.num_rows != shard.rows:
        report.problems.append(f"{path}: {table.num_rows} rows, manifest says {shard.rows}")
    return table


def validate_shapes(directory: Location, report: ValidationReport) -> None:
    manifest = Manifest.load(directory)
    if manifest is None:
        return
    for shard in manifest.shards:
        table = _open_checked(directory, shard, SHAPE_SCHEMA, report)
        if table is None:
            continue
        report.shards += 1
        for row in table.to_pylist():
            sid = row["shape_id"]
            report.shapes += 1
            v = np.asarray(row["vertices"], np.float32).reshape(-1, 3)
            f = np.asarray(row["faces"], np.int64).reshape(-1, 3)
            uv = np.asarray(row["uvs"], np.float32)
            regions = np.asarray(row["face_regions"])
            where = f"{join(directory, shard.file)} shape {sid}"
            if not np.all(np.isfinite(v)) or np.abs(v).max(initial=0) > 1.0 + 1e-5:
                report.problems.append(f"{where}: vertices not finite or outside [-1, 1]^3")
            if len(f) == 0 or f.min() < 0 or f.max() >= len(v):
                report.problems.append(f"{where}: face indices out of range")
            if len(uv) != 6 * len(f) or uv.min(initial=0) < 0 or uv.max(initial=0) > 1:
                report.problems.append(f"{where}: uvs missing or outside [0, 1]")
            if len(regions) != len(f) or regions.min(initial=0) < 0 or regions.max(initial=0) >= len(row["region_textures"]):
                report.problems.append(f"{where}: face regions do not match region_textures")


def validate_views(directory: Location, report: ValidationReport, expected_views: int | None = None) -> None:
    from PIL import Image

    manifest = Manifest.load(directory)
    if manifest is None:
        return
    if expected_views is None:  # "as rendered": a shard that lost a view must not pass
        expected_views = views_per_shape(manifest.config)
    for shard in manifest.shards:
        table = _open_checked(directory, shard, VIEW_SCHEMA, report)
        if table is None:
            continue
        report.shards += 1
        path = shard_path(directory, shard)
        counts: dict[int, int] = {}
        indices: dict[int, list[int]] = {}
        for row in table.to_pylist():
            sid, view = row["shape_id"], row["view"]
            counts[sid] = counts.get(sid, 0) + 1
            indices.setdefault(sid, []).append(view)
            report.views += 1
            where = f"{path} shape {sid} view {view}"
            h, w = row["height"], row["width"]
            try:
                rgba = np.asarray(Image.open(io.BytesIO(row["rgba"])))
            except Exception as err:  # noqa: BLE001
                report.problems.append(f"{where}: rgba does not decode ({err})")
                continue
            if rgba.shape != (h, w, 4):
                report.problems.append(f"{where}: rgba is {rgba.shape}, expected {(h, w, 4)}")
                continue
            if len(row["depth"]) != h * w * 4:
                report.problems.append(f"{where}: depth holds {len(row['depth'])} bytes, expected {h * w * 4}")
                continue
            if len(row["normal"]) != h * w * 3 * 2:
                report.problems.append(f"{where}: normal holds {len(row['normal'])} bytes, expected {h * w * 3 * 2}")
            if row.get("position") is not None and len(row["position"]) != h * w * 3 * 4:
                report.problems.append(f"{where}: position holds {len(row['position'])} bytes, expected {h * w * 3 * 4}")
            depth = np.frombuffer(row["depth"], "<f4").reshape(h, w)
            c2w = np.asarray(row["c2w"], np.float64).reshape(4, 4)
            R = c2w[:3, :3]
            if not np.all(np.isfinite(c2w)) or not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or abs(np.linalg.det(R) - 1) > 1e-4:
                report.problems.append(f"{where}: c2w is not a finite rigid transform")
            if not np.all(np.isfinite(row["intrinsics"])) or min(row["intrinsics"][:2]) <= 0:
                report.problems.append(f"{where}: intrinsics {row['intrinsics']} are not positive and finite")
            if not np.array_equal(depth > 0, rgba[..., 3] > 0) or not np.all(np.isfinite(depth)):
                report.problems.append(f"{where}: depth is not present exactly where alpha > 0")
        for sid, n in counts.items():
            if expected_views is not None and n != expected_views:
                report.problems.append(f"{path} shape {sid}: {n} views, expected {expected_views}")
            elif sorted(indices[sid]) != list(range(n)):
                report.problems.append(f"{path} shape {sid}: view indices {sorted(indices[sid])}, expected 0..{n - 1} once each")
        if sorted(counts) != sorted(shard.shape_ids):
            report.problems.append(f"{path}: shapes {sorted(counts)} differ from the manifest's {list(shard.shape_ids)}")


def validate_root(root: Location, expected_views: int | None = None) -> ValidationReport:
    """Every shard of a root (a local path or a filesystem URI) checked; nothing is changed."""
    report = ValidationReport()
    if not is_dir(root):
        report.problems.append(f"{root}: no such directory")
        return report
    shapes, views = join(root, "shapes"), join(root, "views")
    try:  # a manifest that is not JSON, of another schema, or names files outside its folder
        loaded = [Manifest.load(shapes), Manifest.load(views)]
    except ValueError as err:
        report.problems.append(str(err))
        return report
    if loaded == [None, None]:
        report.problems.append(f"{root}: neither shapes/manifest.json nor views/manifest.json exists")
        return report
    for directory in (shapes, views):
        manifest = Manifest.load(directory)
        if manifest is None:
            continue
        listed = {s.file for s in manifest.shards}
        for stray in [name for name in list_files(directory) if name.endswith(".parquet") and name not in listed]:
            report.notes.append(f"{join(directory, stray)}: not in the manifest (left by an interrupted run; readers ignore it)")
    validate_shapes(shapes, report)
    validate_views(views, report, expected_views)
    for directory, stage in ((shapes, "generate"), (views, "render")):
        manifest = Manifest.load(directory)
        if manifest is not None:
            report_failures(directory, manifest, stage, report)
    return report


def report_failures(directory: Location, manifest: Manifest, stage: str, report: ValidationReport, most: int = 20) -> None:
    """Shapes the manifest's failure ledger lists are missing from the root: a problem each (the
    first `most`, then a count), so a root with holes never validates as OK."""
    failures = sorted(manifest.failures, key=lambda f: f.shape_id)
    where = Manifest.path(directory)
    for failure in failures[:most]:
        report.problems.append(f"{where}: shape {failure.shape_id} failed and is missing: {failure.reason}")
    if len(failures) > most:
        report.problems.append(f"{where}: ... and {len(failures) - most} more failed shapes (see its 'failures')")
    if failures:
        report.notes.append(f"{where}: rerun `zeroverse {stage}` with the same options to retry the {len(failures)} failed shape(s)")
