"""``imagegen usage``: its time flags, its refusals, and the report it makes of the records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imagegen.cli import main
from imagegen.usage import UsageInputError, parse_time, render, summarize, window
from imagegen_schemas import Plan, Tier
from imagegen_schemas.usage import AttemptOutcome, AttemptUsage, UsageRecorded, UsageState

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("30m", NOW - timedelta(minutes=30)),
        ("90s", NOW - timedelta(seconds=90)),
        ("2w", NOW - timedelta(weeks=2)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T11:00:00+01:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),
    ],
)
def test_times_are_iso_8601_or_back_from_now(text: str, expected: datetime) -> None:
    assert parse_time("--since", text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "h", "-3d", "2026-13-01", ""])
def test_a_bad_time_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(UsageInputError, match=r"^--until: .* ISO-8601"):
        parse_time("--until", text, NOW)


def test_the_window_must_not_be_empty_and_the_user_must_be_named() -> None:
    with pytest.raises(UsageInputError, match="--until .* must be after --since"):
        window("u", "1h", "2h", NOW)
    with pytest.raises(UsageInputError, match="--user"):
        window("  ", "1h", None, NOW)
    assert window("u", "1h", None, NOW).until == NOW


def test_bad_input_exits_2_with_the_flag_named_before_any_kafka_read(capsys) -> None:
    argv = ["usage", "--user", "u", "--since", "last tuesday", "--bootstrap", "127.0.0.1:1"]
    assert main(argv) == 2
    assert "--since: 'last tuesday'" in capsys.readouterr().err


def rec(job: str, user: str, ended: datetime, **kw: object) -> UsageRecorded:
    fields: dict[str, object] = {
        "job_id": job,
        "user_id": user,
        "plan": Plan.PRO,
        "tier": Tier.FAST,
        "model": "m",
        "state": UsageState.DELIVERED,
        "images_requested": 2,
        "images": 2,
        "gpu_seconds": 3.0,
        "gpu_seconds_by_class": {"H100-80GB": 1.0, "A10G-24GB": 2.0},
        "attempts": (
            AttemptUsage(
                fencing_token=1,
                attempt=1,
                worker_id="wa",
                worker_class="A10G-24GB",
                outcome=AttemptOutcome.PAUSED,
                gpu_seconds=2.0,
            ),
            AttemptUsage(
                fencing_token=2,
                attempt=1,
                worker_id="wh",
                worker_class="H100-80GB",
                outcome=AttemptOutcome.GENERATED,
                gpu_seconds=1.0,
            ),
        ),
        "requested_at": ended - timedelta(seconds=10),
        "ended_at": ended,
    }
    fields.update(kw)
    return UsageRecorded.model_validate(fields)


def test_the_report_drops_duplicates_other_users_and_jobs_outside_the_window() -> None:
    w = window("u1", "24h", None, NOW)
    inside = NOW - timedelta(hours=1)
    records = [
        ("e1", rec("j1", "u1", inside)),
        ("e1", rec("j1", "u1", inside)),  # the same record twice (a re-emission)
        (
            "e2",
            rec(
                "j2",
                "u1",
                inside + timedelta(minutes=1),
                plan=Plan.FREE,
                tier=Tier.RELAX,
                state=UsageState.CANCELLED,
                images=0,
                gpu_seconds=0.5,
                gpu_seconds_by_class={"A10G-24GB": 0.5},
                attempts=(),
            ),
        ),
        ("e3", rec("j3", "u2", inside)),  # another user
        ("e4", rec("j4", "u1", NOW - timedelta(days=2))),  # before --since
        ("e5", rec("j5", "u1", NOW)),  # --until is exclusive
    ]
    report = summarize(records, w)
    assert [j["job_id"] for j in report["jobs"]] == ["j1", "j2"]
    t = report["totals"]
    assert (t["jobs"], t["images"], t["gpu_seconds"]) == (2, 2, 3.5)
    assert t["gpu_seconds_by_class"] == {"A10G-24GB": 2.5, "H100-80GB": 1.0}
    assert t["by_tier"] == {
        "fast": {"jobs": 1, "images": 2, "gpu_seconds": 3.0},
        "relax": {"jobs": 1, "images": 0, "gpu_seconds": 0.5},
    }
    assert t["by_plan"]["free"] == {"jobs": 1, "images": 0, "gpu_seconds": 0.5}
    assert t["by_state"]["cancelled"]["jobs"] == 1
    text = render(report)
    assert "total: 2 jobs, 2 images, 3.500 GPU-seconds" in text
    assert "class A10G-24GB: 2.500 GPU-seconds" in text
    assert "tier relax: 1 jobs, 0 images, 0.500 GPU-seconds" in text
    assert "j1" in text and "A10G-24GB=2.000, H100-80GB=1.000" in text
