"""Dead letters (docs/dlq.md, ADR 0840): what a consumer writes for a redriven record, which group
handles a redriven copy, and the pure parts of ``imagegen_runtime.dlq`` (ids, the redrive plan,
the copy's headers, decoding). The broker round trip is ``tests/integration/test_dlq_kafka.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime

import pytest
from confluent_kafka import Message

from imagegen_runtime.dlq import (
    AlreadyRedriven,
    Letter,
    NoSuchLetter,
    find_letter,
    plan,
    redrive_headers,
)
from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import (
    REDRIVE_COUNT,
    REDRIVE_ERRORS,
    REDRIVE_GROUP,
    REDRIVE_OF,
    ReplayingConsumer,
)
from imagegen_runtime.publishing import InMemoryPublisher, build_record
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.workers import DeadLettered, DeadLetterRedriven, RecordHeader

from .test_consumer_faults import (
    REQUESTED,
    RecordMeta,
    cancel,
    drive,
    ended,
    letters,
    run_until_settled,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def redriven_record(group: str, errors: list[str], offset: int = 9) -> tuple[Message, Envelope]:
    rec = build_record(cancel("j"), key="j", producer="test", topic_prefix="", causation_id=None)
    headers = [
        *rec.headers,
        (REDRIVE_OF, b"letter-1"),
        (REDRIVE_GROUP, group.encode()),
        (REDRIVE_ERRORS, json.dumps(errors).encode()),
        (REDRIVE_COUNT, b"1"),
    ]
    msg = Message(
        topic=REQUESTED,
        partition=0,
        offset=offset,
        key=b"j",
        value=rec.envelope.to_json(),
        headers=headers,
    )
    return msg, rec.envelope


async def test_a_redriven_copy_that_fails_again_keeps_every_error_and_fails_no_job_again() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        raise ValueError("second bug")

    msg, _ = redriven_record("g", ["handler failed 3 times: ValueError('first bug')"])
    fake, pub, consumer = await run_until_settled([msg], handle, max_attempts=2)
    (letter,) = letters(pub)
    assert letter.redrive_of == "letter-1" and letter.redrives == 1
    assert letter.previous_errors == ("handler failed 3 times: ValueError('first bug')",)
    assert "second bug" in letter.error
    names = [h.name for h in letter.original_headers]
    assert names[0] == "ce_specversion" and REDRIVE_OF in names
    # The job was failed when the record was first dead-lettered: no second terminal event.
    assert ended(pub) == []
    assert fake.committed == [9] and consumer.dead_lettered == 1


async def test_a_redriven_copy_for_another_group_is_committed_unhandled() -> None:
    seen: list[str] = []

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        seen.append(env.event_id)

    msg, _ = redriven_record("the-group-that-failed", ["e1"])
    fake, pub, consumer = await run_until_settled([msg], handle)
    assert seen == [] and fake.committed == [9]
    assert consumer.skipped_redrives == 1 and consumer.handled == 0 and letters(pub) == []


async def test_the_group_named_by_the_redrive_handles_the_copy() -> None:
    seen: list[str] = []

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        seen.append(meta.headers[REDRIVE_OF])

    msg, _ = redriven_record("g", ["e1"])
    fake, _, consumer = await run_until_settled([msg], handle)
    assert seen == ["letter-1"] and fake.committed == [9] and consumer.handled == 1


async def test_a_dead_letter_id_is_derived_from_the_record_and_the_group() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        raise KeyError("missing")

    msg, _ = redriven_record("g", [])
    ids = []
    for group in ("g", "g", "h"):
        pub = InMemoryPublisher("test")
        consumer = FastStreamConsumer(
            "unused:9092", group, [REQUESTED], handle, pub, max_attempts=1, backoff_s=0.001
        )
        if group == "h":  # the copy is for g: h would skip it, so give h the plain record
            msg = Message(topic=REQUESTED, partition=0, offset=9, key=b"j", value=msg.value())
        await drive(consumer, [msg])
        ids.append(pub.on("imagegen.deadletter")[0].event_id)
    assert ids[0] == ids[1] and ids[2] != ids[0]


def make_letter(
    letter_id: str,
    *,
    value: bytes = b"{not json",
    key: bytes | None = b"job-1",
    redrives: tuple[DeadLetterRedriven, ...] = (),
    redrive_count: int = 0,
    previous: tuple[str, ...] = (),
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Letter:
    d = DeadLettered(
        source_topic="t1.imagegen.jobs.requested",
        source_partition=2,
        source_offset=40,
        consumer_group="g",
        error="unparseable record: 1 validation error\nmore",
        original_key_b64=base64.b64encode(key).decode() if key else None,
        original_value_b64=base64.b64encode(value).decode(),
        original_headers=tuple(
            RecordHeader(name=k, value_b64=base64.b64encode(v).decode()) for k, v in headers
        ),
        redrives=redrive_count,
        previous_errors=previous,
    )
    return Letter(letter_id, T0, "t1.imagegen.deadletter[0]@5", d, redrives)


def redrove(letter_id: str, n: int = 1) -> DeadLetterRedriven:
    return DeadLetterRedriven(
        letter_id=letter_id,
        source_topic="t1.imagegen.jobs.requested",
        source_partition=2,
        source_offset=40,
        consumer_group="g",
        redriven_partition=2,
        redriven_offset=41,
        redrive=n,
    )


def test_all_picks_letters_not_redriven_and_never_a_record_that_failed_after_a_redrive() -> None:
    fresh = make_letter("aaaaaaaa-1")
    done = make_letter("bbbbbbbb-1", redrives=(redrove("bbbbbbbb-1"),))
    again = make_letter("cccccccc-1", redrive_count=1, previous=("first",))
    assert [(x.id, n) for x, n in plan([fresh, done, again], None)] == [("aaaaaaaa-1", 1)]
    # By id, the failed-again letter can be redriven (once more: its number is its own).
    assert [(x.id, n) for x, n in plan([fresh, done, again], ["cccccccc"])] == [("cccccccc-1", 1)]


def test_a_letter_redriven_already_is_refused_unless_forced() -> None:
    done = make_letter("bbbbbbbb-1", redrives=(redrove("bbbbbbbb-1"),))
    with pytest.raises(AlreadyRedriven, match="redriven already.*--force"):
        plan([done], ["bbbbbbbb-1"])
    assert [(x.id, n) for x, n in plan([done], ["bbbbbbbb-1"], force=True)] == [("bbbbbbbb-1", 2)]


def test_letter_ids_match_exactly_or_by_a_unique_prefix_of_six() -> None:
    a, b = make_letter("abcdef01-x"), make_letter("abcdef02-y")
    assert find_letter([a, b], "abcdef01-x") is a
    assert find_letter([a, b], "ABCDEF02") is b
    with pytest.raises(NoSuchLetter, match="names 2 dead letters"):
        find_letter([a, b], "abcdef")
    with pytest.raises(NoSuchLetter, match="6"):
        find_letter([a, b], "abc")
    with pytest.raises(NoSuchLetter, match="dlq list"):
        find_letter([a, b], "ffffffff")


def test_the_copy_keeps_the_original_headers_and_replaces_earlier_redrive_headers() -> None:
    x = make_letter(
        "cccccccc-1",
        redrive_count=1,
        previous=("first",),
        headers=(("ce_id", b"e-1"), ("traceparent", b"00-ab"), (REDRIVE_OF, b"old")),
    )
    headers = redrive_headers(x, 1)
    assert headers[:2] == [("ce_id", b"e-1"), ("traceparent", b"00-ab")]
    h = dict(headers)
    assert h[REDRIVE_OF] == b"cccccccc-1" and h[REDRIVE_GROUP] == b"g"
    assert json.loads(h[REDRIVE_ERRORS]) == ["first", x.letter.error]
    assert h[REDRIVE_COUNT] == b"2"
    assert [k for k, _ in headers].count(REDRIVE_OF) == 1


def test_an_unparseable_record_is_shown_raw_and_its_job_comes_from_the_key() -> None:
    x = make_letter("aaaaaaaa-1")
    assert x.original is None and x.job_id == "job-1"
    d = x.detail()
    assert d["original"] is None and base64.b64decode(d["original_value_b64"]) == b"{not json"
    assert d["error"] == "unparseable record: 1 validation error" and len(d["errors"]) == 1


def test_a_parseable_record_is_decoded_and_its_job_comes_from_the_payload() -> None:
    rec = build_record(
        cancel("job-9"), key="job-9", producer="p", topic_prefix="", causation_id=None
    )
    x = make_letter("aaaaaaaa-1", value=rec.envelope.to_json(), key=None, previous=("e0",))
    assert x.job_id == "job-9"
    d = x.detail()
    assert d["original"]["event_id"] == rec.envelope.event_id and d["original_value_b64"] is None
    assert d["errors"] == ["e0", x.letter.error] and d["redriven"] is False


async def test_a_replaying_decider_skips_a_copy_for_another_group_and_letters_its_own() -> None:
    seen: list[str] = []

    async def decide(env: Envelope, payload: Payload, meta: RecordMeta, live: bool) -> None:
        seen.append(meta.headers[REDRIVE_GROUP])
        raise ValueError("still broken")

    pub = InMemoryPublisher("scheduler")
    decider = ReplayingConsumer("unused:9092", [REQUESTED], decide, pub, "imagegen-scheduler")
    stop = asyncio.Event()
    for group in ("imagegen-api-projector", "imagegen-scheduler"):
        msg, _ = redriven_record(group, ["first bug"])
        await decider._process(msg, True, stop)
    assert seen == ["imagegen-scheduler"]
    (letter,) = letters(pub)
    assert letter.consumer_group == "imagegen-scheduler" and letter.redrive_of == "letter-1"
    assert letter.previous_errors == ("first bug",) and "still broken" in letter.error
    assert ended(pub) == []
