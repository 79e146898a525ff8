"""docs/consumers.md's topic table says what the catalog says: key, partitions, retention, types."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagegen_schemas import TOPICS, TopicSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "consumers.md"
ROW = re.compile(
    r"^\| `(?P<topic>imagegen\.[a-z.]+)` \| (?P<key>[^|]+) \| (?P<parts>\d+) "
    r"\| (?P<ret>[^|]+) \| (?P<types>[^|]+) \|$"
)

pytestmark = pytest.mark.unit


def _retention(spec: TopicSpec) -> str:
    text = "forever" if spec.retention_ms < 0 else f"{spec.retention_ms / 86_400_000:g} days"
    return text + (", compacted" if spec.compacted else "")


def test_the_topic_table_matches_the_catalog() -> None:
    rows = {m["topic"]: m for m in map(ROW.match, DOC.read_text().splitlines()) if m}
    assert set(rows) == {t.name for t in TOPICS}, "update the table in docs/consumers.md"
    for spec in TOPICS:
        row = rows[spec.name]
        assert row["key"].strip().startswith(f"`{spec.key}`"), spec.name
        assert int(row["parts"]) == spec.partitions, spec.name
        assert row["ret"].strip() == _retention(spec), spec.name
        types = re.findall(r"`(imagegen\.[a-z_.]+)`", row["types"])
        assert types == [m.event_type for m in spec.events], spec.name
