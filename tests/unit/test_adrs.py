"""Every ADR says whether it still holds, and a superseded one names the ADR that replaced it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ADR_DIR = Path(__file__).resolve().parents[2] / "docs" / "adr"
ADRS = sorted(ADR_DIR.glob("[0-9][0-9][0-9][0-9]-*.md"))
STATUS = re.compile(r"^Status: (?P<text>.+(?:\n(?!\n).+)*)", re.MULTILINE)
# "Superseded by 0206", "superseded by [ADR 0206](0206-....md)", "superseded by ADR 0206"
SUPERSEDED_BY = re.compile(r"superseded by \[?(?:ADR )?(?P<number>\d{4})", re.IGNORECASE)
SUPERSEDES = re.compile(r"\bsupersedes \[?(?:ADR )?(?P<number>\d{4})", re.IGNORECASE)


def number(adr: Path) -> str:
    return adr.name[:4]


def status(adr: Path) -> str | None:
    """The Status paragraph, if it comes before the first section heading."""
    head = adr.read_text().split("\n## ", 1)[0]
    found = STATUS.search(head)
    return " ".join(found.group("text").split()) if found else None


def test_the_adr_folder_is_found() -> None:
    assert len(ADRS) >= 35, ADR_DIR


def test_adr_numbers_are_unique() -> None:
    numbers = [number(a) for a in ADRS]
    assert sorted(n for n in set(numbers) if numbers.count(n) > 1) == []


@pytest.mark.parametrize("adr", ADRS, ids=lambda a: a.name)
def test_every_adr_has_a_status_line_near_the_top(adr: Path) -> None:
    assert status(adr), f"{adr.name}: add 'Status: Accepted' (or ...) before the first '## '"


@pytest.mark.parametrize("adr", ADRS, ids=lambda a: a.name)
def test_a_superseded_adr_names_an_existing_successor(adr: Path) -> None:
    text = status(adr) or ""
    existing = {number(a) for a in ADRS}
    for successor in SUPERSEDED_BY.findall(text):
        assert successor in existing, f"{adr.name} is superseded by a missing ADR {successor}"
        assert successor != number(adr)


@pytest.mark.parametrize("adr", ADRS, ids=lambda a: a.name)
def test_an_adr_that_supersedes_another_is_named_by_it(adr: Path) -> None:
    by_number = {number(a): a for a in ADRS}
    for older in SUPERSEDES.findall(status(adr) or ""):
        assert older in by_number, f"{adr.name} supersedes a missing ADR {older}"
        named = SUPERSEDED_BY.findall(status(by_number[older]) or "")
        assert number(adr) in named, (
            f"ADR {older}'s Status should say 'Superseded by {number(adr)}'"
        )


@pytest.mark.parametrize("adr", ADRS, ids=lambda a: a.name)
def test_every_adr_named_in_a_status_exists(adr: Path) -> None:
    text = status(adr) or ""
    named = set(re.findall(r"\bADRs? (\d{4})", text) + re.findall(r"\((\d{4})-[\w-]+\.md\)", text))
    links = re.findall(r"\(([\w-]+\.md)\)", text)
    assert named <= {number(a) for a in ADRS}, f"{adr.name} names a missing ADR"
    assert [n for n in links if not (ADR_DIR / n).exists()] == [], f"{adr.name}: broken link"
