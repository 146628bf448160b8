"""The docs name what the code has: files that exist, shard names the writer writes, row groups as
written, and every docs/*.md an error message points users to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zeroverse.store.shards import SHARD_FILE, shard_name

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_source_file_a_doc_names_exists(doc):
    text = _text(doc)
    named = set(re.findall(r"\b((?:zeroverse|pipelines|blender_scripts|bench|tests)/[\w/]+\.py)\b", text))
    for folder, group in re.findall(r"\b(zeroverse|pipelines|blender_scripts)/\{([\w,]+)\}\.py", text):
        named.update(f"{folder}/{name}.py" for name in group.split(","))
    missing = sorted(n for n in named if not (REPO / n).is_file())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_shard_names_in_the_docs_are_the_ones_written(doc):
    names = re.findall(r"\b(?:shapes|views)-\d+-\d+\.parquet\b", _text(doc))
    wrong = sorted({n for n in names if not SHARD_FILE.fullmatch(n)})
    assert not wrong, f"{doc.name} shows shard names the writer never writes (it writes e.g. {shard_name('views', 0, 7)}): {wrong}"


def test_architecture_says_one_row_group_per_shape_for_both_kinds():
    text = _text(REPO / "docs" / "architecture.md")
    shapes = text.split("## Shape shards", 1)[1].split("##", 1)[0]
    views = text.split("## View shards", 1)[1].split("##", 1)[0]
    assert "one row group per shape" in shapes.lower() and "one row group per shard" not in shapes.lower()
    assert "one row group per shape" in views.lower()


def test_every_doc_an_error_points_to_exists():
    sources = [p for folder in ("zeroverse", "pipelines", "blender_scripts") for p in (REPO / folder).rglob("*.py")]
    pointed = {m for p in sources for m in re.findall(r"\bdocs/[\w-]+\.md\b", _text(p))}
    assert "docs/config.md" in pointed  # the recipe config errors
    missing = sorted(d for d in pointed if not (REPO / d).is_file())
    assert not missing, f"messages point to docs that do not exist: {missing}"
