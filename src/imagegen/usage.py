"""``imagegen usage``: one user's usage ledger, read from the ``imagegen.usage`` topic.

    imagegen usage --user U --since T [--until T] [--json] [--bootstrap HOST:PORT] [--prefix P]

``T`` is ISO-8601 (``2026-12-01``, ``2026-12-01T10:00:00Z``; a time without a zone is UTC) or
a time back from now: ``90s``, ``30m``, ``24h``, ``7d``, ``2w``. A job is in the window when it
ended (``ended_at``) at or after ``--since`` and before ``--until`` (default: now).

The topic is the source of truth (docs/usage.md): this reads it from the offsets at
``--since`` (record timestamps, which are never before a job's end) to its end, keeps the
user's records, drops a record seen twice (same ``event_id``), and prints each job and the
totals: jobs, images, GPU seconds by worker class, by tier, by plan and by end state.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

USAGE_TOPIC = "imagegen.usage"
RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class UsageInputError(ValueError):
    """Bad input to ``imagegen usage``; the message names the flag."""


def parse_time(flag: str, text: str, now: datetime) -> datetime:
    """``text`` as an aware UTC datetime: ISO-8601, or ``<n><s|m|h|d|w>`` back from ``now``."""
    value = text.strip()
    found = RELATIVE.match(value)
    if found:
        return now - timedelta(seconds=float(found.group(1)) * UNITS[found.group(2)])
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageInputError(
            f"{flag}: {text!r} is neither an ISO-8601 time (2026-12-01T10:00:00Z) nor a time "
            "back from now (30m, 24h, 7d)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    user: str
    since: datetime
    until: datetime


def window(user: str, since: str, until: str | None, now: datetime) -> Window:
    """The query, validated; raises UsageInputError naming the flag."""
    if not user.strip():
        raise UsageInputError("--user: must not be empty")
    start = parse_time("--since", since, now)
    end = parse_time("--until", until, now) if until is not None else now
    if end <= start:
        raise UsageInputError(
            f"--until ({end.isoformat()}) must be after --since ({start.isoformat()})"
        )
    return Window(user.strip(), start, end)


def read_records(bootstrap: str, topic: str, since: datetime) -> Iterator[tuple[str, Any]]:
    """(event id, UsageRecorded) of every record of ``topic`` from ``since`` to its end now."""
    from imagegen_schemas import parse
    from imagegen_schemas.usage import UsageRecorded

    from .replay import MissingTopic, envelopes_since

    try:
        for envelope in envelopes_since(bootstrap, topic, since):
            if envelope.type != UsageRecorded.event_type:
                continue
            payload = parse(envelope)
            assert isinstance(payload, UsageRecorded)
            yield envelope.event_id, payload
    except MissingTopic as exc:
        raise UsageInputError(str(exc)) from None


def _bucket() -> dict[str, Any]:
    return {"jobs": 0, "images": 0, "gpu_seconds": 0.0}


def _add(bucket: dict[str, Any], images: int, gpu_seconds: float) -> None:
    bucket["jobs"] += 1
    bucket["images"] += images
    bucket["gpu_seconds"] = round(bucket["gpu_seconds"] + gpu_seconds, 6)


def summarize(records: list[tuple[str, Any]], w: Window) -> dict[str, Any]:
    """The user's jobs in the window (duplicates by event id dropped) and their totals."""
    seen: set[str] = set()
    jobs: list[dict[str, Any]] = []
    totals: dict[str, Any] = {**_bucket(), "gpu_seconds_by_class": {}}
    by: dict[str, dict[str, dict[str, Any]]] = {"tier": {}, "plan": {}, "state": {}}
    for event_id, r in records:
        if event_id in seen or r.user_id != w.user or not (w.since <= r.ended_at < w.until):
            continue
        seen.add(event_id)
        jobs.append(
            {
                "job_id": r.job_id,
                "ended_at": r.ended_at.isoformat(),
                "state": r.state.value,
                "plan": r.plan.value,
                "tier": r.tier.value,
                "model": r.model,
                "images": r.images,
                "gpu_seconds": r.gpu_seconds,
                "gpu_seconds_by_class": dict(r.gpu_seconds_by_class),
            }
        )
        _add(totals, r.images, r.gpu_seconds)
        for cls, seconds in r.gpu_seconds_by_class.items():
            by_class = totals["gpu_seconds_by_class"]
            by_class[cls] = round(by_class.get(cls, 0.0) + seconds, 6)
        for name, value in (("tier", r.tier.value), ("plan", r.plan.value), ("state", r.state)):
            _add(by[name].setdefault(str(value), _bucket()), r.images, r.gpu_seconds)
    jobs.sort(key=lambda j: (j["ended_at"], j["job_id"]))
    return {
        "user": w.user,
        "since": w.since.isoformat(),
        "until": w.until.isoformat(),
        "jobs": jobs,
        "totals": {**totals, **{f"by_{k}": v for k, v in by.items()}},
    }


def render(report: dict[str, Any]) -> str:
    """The report as text: one line per job, then the totals."""
    lines = [f"usage of {report['user']} from {report['since']} to {report['until']}"]
    jobs = report["jobs"]
    if jobs:
        lines.append(
            f"{'ENDED':<25} {'JOB':<36} {'STATE':<15} {'PLAN':<5} {'TIER':<5} {'IMAGES':>6} "
            f"{'GPU-S':>9}  BY CLASS"
        )
    for j in jobs:
        classes = ", ".join(f"{c}={s:.3f}" for c, s in sorted(j["gpu_seconds_by_class"].items()))
        lines.append(
            f"{j['ended_at'][:25]:<25} {j['job_id']:<36} {j['state']:<15} {j['plan']:<5} "
            f"{j['tier']:<5} {j['images']:>6} {j['gpu_seconds']:>9.3f}  {classes or '-'}"
        )
    t = report["totals"]
    lines.append(
        f"total: {t['jobs']} jobs, {t['images']} images, {t['gpu_seconds']:.3f} GPU-seconds"
    )
    for cls, seconds in sorted(t["gpu_seconds_by_class"].items()):
        lines.append(f"  class {cls}: {seconds:.3f} GPU-seconds")
    for name in ("tier", "plan", "state"):
        for key, b in sorted(t[f"by_{name}"].items()):
            lines.append(
                f"  {name} {key}: {b['jobs']} jobs, {b['images']} images, "
                f"{b['gpu_seconds']:.3f} GPU-seconds"
            )
    return "\n".join(lines)


def cmd_usage(args: argparse.Namespace) -> int:
    from .cli import _bootstrap

    try:
        w = window(args.user, args.since, args.until, datetime.now(UTC))
        records = list(read_records(_bootstrap(args), args.prefix + USAGE_TOPIC, w.since))
    except UsageInputError as exc:
        print(f"imagegen usage: {exc}", file=sys.stderr)
        return 2
    report = summarize(records, w)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else render(report))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``imagegen usage`` on the CLI's subparsers."""
    p = sub.add_parser("usage", help="a user's usage ledger (jobs, images, GPU-seconds)")
    p.add_argument("--user", required=True, help="user id")
    p.add_argument("--since", required=True, help="ISO-8601, or back from now: 30m, 24h, 7d")
    p.add_argument("--until", default=None, help="ISO-8601 or relative (default: now)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--bootstrap", default=None, help="Kafka host:port")
    p.add_argument("--prefix", default="", help="topic name prefix (test isolation)")
    p.set_defaults(func=cmd_usage)
