"""Event replay for debugging and for proving the projections are a pure function of the log.

    imagegen replay --job ID               one job's full timeline, read from the topics
    imagegen replay --rebuild --verify     rebuild the job projection from offset 0 into fresh
                                           tables and compare it row by row with the live one

Replay only reads Kafka and writes its own fresh tables: it has no publisher, no blob store and
no HTTP client, so it cannot repeat a side effect (webhook, upload, assignment).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from imagegen_runtime.faults import is_transient
from imagegen_schemas import Envelope, parse

if TYPE_CHECKING:
    from imagegen_api.service_layer.ports import JobStore

JOB_TOPICS = (
    "imagegen.jobs.requested",
    "imagegen.jobs.moderated",
    "imagegen.jobs.scheduled",
    "imagegen.jobs.progress",
    "imagegen.jobs.generated",
    "imagegen.jobs.delivered",
    "imagegen.jobs.ended",
)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    envelope: Envelope
    traceparent: str | None = None  # the record's W3C trace context header, if any


@dataclass(frozen=True)
class Raw:
    """A record as it sits in the log: bytes that may or may not be an event."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    traceparent: str | None = None  # the record's W3C trace context header, if any

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


def high_watermarks(bootstrap: str, topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "imagegen-replay-probe"})
    try:
        md = c.list_topics(timeout=10)
        marks = {}
        for t in topics:
            for p in md.topics[t].partitions:
                marks[(t, p)] = _high_watermark(c, TopicPartition(t, p))
    finally:
        c.close()
    return marks


def _high_watermark(c: Consumer, tp: TopicPartition, retry_for_s: float = 30.0) -> int:
    """A partition's high watermark; a retriable error (a partition whose leader is still
    being elected, as just after the topic was made) is asked again for ``retry_for_s``."""
    give_up = time.monotonic() + retry_for_s
    while True:
        try:
            return int(c.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException as exc:
            if not is_transient(exc) or time.monotonic() >= give_up:
                raise
            time.sleep(0.2)  # before asking the cluster again for the partition's leader


def read(
    bootstrap: str,
    until: dict[tuple[str, int], int],
    start: dict[tuple[str, int], int] | None = None,
) -> Iterator[Record]:
    """Well-formed events of every (topic, partition) from ``start`` (default 0) up to ``until``.

    Malformed records are the dead-letter topic's business, not the timeline's: they are left out
    here; ``rebuild`` reads ``read_raw`` and reports them."""
    for raw in read_raw(bootstrap, until, start):
        envelope = _envelope_or_none(raw.value)
        if envelope is not None:
            yield Record(raw.topic, raw.partition, raw.offset, envelope, raw.traceparent)


class MissingTopic(LookupError):
    """The topic does not exist on the broker (or cannot be read)."""


def envelopes_since(bootstrap: str, topic: str, since: datetime | None) -> Iterator[Envelope]:
    """Every envelope on ``topic`` from the first record at or after ``since`` (else the
    topic's start) up to its end now; records that are not envelopes are left out. Raises
    MissingTopic naming the topic and the fix."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "imagegen-probe"})
    try:
        md = probe.list_topics(timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise MissingTopic(
                f"no topic {topic} on {bootstrap}: run `imagegen topics create` (or check --prefix)"
            )
        parts = sorted(md.topics[topic].partitions)
        ms = int(since.timestamp() * 1000) if since else 0
        found = probe.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=10)
        until, start = {}, {}
        for tp in found:
            low, high = probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            until[(topic, tp.partition)] = high
            # -1: no record at or after ``since`` in this partition: nothing to read there.
            start[(topic, tp.partition)] = high if tp.offset < 0 else max(tp.offset, low)
    finally:
        probe.close()
    for raw in read_raw(bootstrap, until, start):
        envelope = _envelope_or_none(raw.value)
        if envelope is not None:
            yield envelope


def read_raw(
    bootstrap: str,
    until: dict[tuple[str, int], int],
    start: dict[tuple[str, int], int] | None = None,
) -> Iterator[Raw]:
    """Every record of every (topic, partition) from ``start`` (default 0) up to ``until``."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"imagegen-replay-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    start = start or {}
    left = {tp for tp, end in until.items() if end > start.get(tp, 0)}
    c.assign([TopicPartition(t, p, start.get((t, p), 0)) for t, p in left])
    # Give up when the broker sends nothing for 120 s, however long the caller spends on each
    # record (a rebuild writes every record to PostgreSQL before it asks for the next).
    deadline = time.monotonic() + 120
    while left and time.monotonic() < deadline:
        msg = c.poll(1.0)
        if msg is None or msg.error():
            continue
        deadline = time.monotonic() + 120
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None  # consumed
        tp = (topic, partition)
        if tp not in left or offset >= until[tp]:
            continue
        yield Raw(topic, partition, offset, msg.value(), _traceparent(msg))
        if offset + 1 >= until[tp]:
            left.discard(tp)
            c.incremental_unassign([TopicPartition(*tp)])
    c.close()
    if left:
        raise TimeoutError(f"could not read {sorted(left)} to their end")


def _traceparent(msg: Any) -> str | None:
    """The ``traceparent`` header of a consumed record, or None."""
    headers = msg.headers() if hasattr(msg, "headers") else None
    for key, value in headers or []:
        if key == "traceparent" and value:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


def _envelope_or_none(value: bytes | None) -> Envelope | None:
    try:
        return Envelope.from_json(value or b"")
    except ValueError:  # pydantic's ValidationError and UnicodeDecodeError are ValueErrors
        return None


def job_timeline(bootstrap: str, job_id: str, prefix: str = "") -> list[Record]:
    marks = high_watermarks(bootstrap, tuple(prefix + t for t in JOB_TOPICS))
    found = [r for r in read(bootstrap, marks) if r.envelope.correlation_id == job_id]
    return sorted(found, key=lambda r: (r.envelope.occurred_at, r.topic, r.offset))


@dataclass(frozen=True)
class JobTrace:
    """The trace a job's events belong to (ADR 0800): the one its first event carries."""

    trace_id: str | None  # 32 hex digits; None when the first event carries no traceparent
    first_event: str  # the first event's type
    in_trace: int  # events carrying that trace id
    total: int  # events of the job
    outside: list[str]  # "type topic/partition@offset: why" of those that do not


def job_trace(records: list[Record]) -> JobTrace | None:
    """The job's trace id, from the ``traceparent`` of its first event; None without events."""
    if not records:
        return None
    first = records[0]
    trace_id = _trace_id(first.traceparent)
    outside = []
    for r in records:
        tid = _trace_id(r.traceparent)
        if trace_id is not None and tid == trace_id:
            continue
        why = "no traceparent" if tid is None else f"trace {tid}"
        outside.append(f"{r.envelope.type} {r.topic}/{r.partition}@{r.offset}: {why}")
    return JobTrace(
        trace_id, first.envelope.type, len(records) - len(outside), len(records), outside
    )


def _trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (version 00: 00-<32 hex>-<16 hex>-<2 hex>)."""
    parts = (traceparent or "").strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1].lower()


def print_trace(found: JobTrace | None) -> None:
    """One line naming the job's trace id (look it up in the trace viewer, docs/tracing.md),
    then the events that are not in it."""
    if found is None:
        return
    if found.trace_id is None:
        print(f"trace: none (the first event, {found.first_event}, carries no traceparent)")
    else:
        print(
            f"trace: {found.trace_id} (from the traceparent of {found.first_event}; "
            f"{found.in_trace} of {found.total} events in it)"
        )
    for line in found.outside[:20]:
        print(f"  not in it: {line}")


def print_timeline(records: list[Record]) -> None:
    if not records:
        print("no events for this job")
        return
    t0 = records[0].envelope.occurred_at
    for r in records:
        e = r.envelope
        ms = (e.occurred_at - t0).total_seconds() * 1000
        keep = {k: v for k, v in e.data.items() if k not in ("job_id", "params", "preview_png_b64")}
        print(
            f"{e.occurred_at.isoformat(timespec='milliseconds')} +{ms:8.1f}ms "
            f"{e.type:<42} {e.producer:<22} {r.topic}/{r.partition}@{r.offset} {keep}"
        )


@dataclass
class Rebuilt:
    """What ``rebuild`` did with the records it read."""

    records: int = 0  # records read
    applied: int = 0  # events applied to the store (redeliveries and job-less events are not)
    unreplayable: list[str] = field(default_factory=list)  # "where: why", one per record left out


async def rebuild(records: Iterable[Raw], store: JobStore) -> Rebuilt:
    """Fold ``records`` into ``store``, whatever they hold.

    A record that is not an event (not JSON, not an envelope, an unknown type, a payload that
    breaks its contract) or that the store refuses (a value it cannot hold) is reported in
    ``unreplayable`` and skipped, as the live projector dead-letters it. A store that cannot be
    reached is not a property of the record: that error is raised.
    """
    done = Rebuilt()
    for raw in records:
        done.records += 1
        try:
            envelope = Envelope.from_json(raw.value or b"")
            payload = parse(envelope)
        except ValueError as exc:  # ValidationError, UnknownEventType, UnicodeDecodeError
            done.unreplayable.append(f"{raw.where}: not an event: {_first_line(exc)}")
            continue
        try:
            applied = await store.apply(envelope, payload, raw.topic, raw.partition, raw.offset)
        except Exception as exc:
            if _unreachable(exc):
                raise
            done.unreplayable.append(
                f"{raw.where}: {envelope.type} {envelope.event_id} not applied: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            )
            continue
        done.applied += int(applied)
    return done


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _unreachable(exc: BaseException) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError)


@dataclass
class Verification:
    compared: int = 0
    equal: int = 0
    differences: list[str] = field(default_factory=list)
    skipped_moving: int = 0  # jobs with events after the snapshot (still changing)
    records: int = 0
    unreplayable: list[str] = field(default_factory=list)  # records left out, and why

    @property
    def ok(self) -> bool:
        return not self.differences


async def wait_projector(
    bootstrap: str, marks: dict[tuple[str, int], int], group: str, timeout_s: float = 120
) -> None:
    """Wait until the live projector committed past every snapshot offset."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    tps = [TopicPartition(t, p) for (t, p), end in marks.items() if end > 0]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            committed = await asyncio.to_thread(c.committed, tps, 10)
            behind = [tp for tp in committed if tp.offset < marks[(tp.topic, tp.partition)]]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"live projector still behind on {len(behind)} partitions")
            await asyncio.sleep(0.2)  # between reads of the group's committed offsets
    finally:
        c.close()


async def rebuild_and_verify(
    bootstrap: str, database_url: str, keep: bool = False, prefix: str = ""
) -> Verification:
    from imagegen_api.adapters.jobstore import PgJobStore, projector_group
    from imagegen_runtime.db import make_engine

    topics = tuple(prefix + t for t in JOB_TOPICS)
    marks = high_watermarks(bootstrap, topics)
    await wait_projector(bootstrap, marks, projector_group(prefix))
    engine = make_engine(database_url)
    live = PgJobStore(engine)
    fresh = PgJobStore(engine, prefix=f"rebuild_{uuid.uuid4().hex[:8]}_")
    await fresh.create()
    report = Verification()
    try:
        rebuilt = await rebuild(read_raw(bootstrap, marks), fresh)
        report.records, report.unreplayable = rebuilt.records, rebuilt.unreplayable
        # Jobs that received events after the snapshot differ legitimately: leave them out.
        now = high_watermarks(bootstrap, topics)
        moving = {r.envelope.correlation_id for r in read(bootstrap, now, start=marks)}
        live_rows, fresh_rows = await live.all_states(), await fresh.all_states()
        for job_id in sorted(set(live_rows) | set(fresh_rows)):
            if job_id in moving:
                report.skipped_moving += 1
                continue
            report.compared += 1
            a, b = live_rows.get(job_id), fresh_rows.get(job_id)
            if a == b and await _same_events(live, fresh, job_id):
                report.equal += 1
            else:
                report.differences.append(f"{job_id}: live={_short(a)} rebuilt={_short(b)}")
    finally:
        if not keep:
            await fresh.drop()
        await engine.dispose()
    return report


async def _same_events(live: Any, fresh: Any, job_id: str) -> bool:
    a = {e["event_id"] for e in await live.timeline(job_id)}
    b = {e["event_id"] for e in await fresh.timeline(job_id)}
    return a == b


def _short(state: dict[str, Any] | None) -> str:
    return "missing" if state is None else f"{state.get('status')}@{state.get('updated_at')}"
