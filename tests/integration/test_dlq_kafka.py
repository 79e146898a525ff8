"""`imagegen dlq list|show|redrive` against the real broker and PostgreSQL (issue 15, item 5).

A record that a consumer group keeps failing on is dead-lettered; `dlq list` shows it with its job
and error, `show` decodes it; `redrive` publishes it again for that group only, and records the
redrive so a second one is refused. A copy that fails again comes back as a second letter with both
errors, and nothing redrives it by itself. A key that is not an operator's is refused before
anything is read or published. What is asserted is what the CLI prints and what the consumers and
the topics see.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from imagegen.cli import main as cli
from imagegen_api.adapters.accounts import PgAccounts
from imagegen_runtime.db import make_engine
from imagegen_runtime.dlq import REDRIVE_TOPIC
from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import REDRIVE_OF, KafkaPublisher, RecordMeta
from imagegen_schemas import Envelope, Payload, Plan, parse
from imagegen_schemas.jobs import CancellationRequested, FailureReason
from tests.support.pg import fresh_database

from .test_kafka import read_all

pytestmark = pytest.mark.integration

REQUESTED = "imagegen.jobs.requested"
ENDED = "imagegen.jobs.ended"


@pytest.fixture(scope="module")
async def keys(infra: Any) -> AsyncIterator[tuple[str, str, str]]:
    """A fresh database with api_keys (dropped afterwards): (its URL, operator key, user key)."""
    async with fresh_database(infra.database_url, "t_dlq") as url:
        engine = make_engine(url, pool_size=1)
        accounts = PgAccounts(engine)
        await accounts.create_tables()
        operator = await accounts.create_key("ops", Plan.FREE, "operator")
        user = await accounts.create_key("someone", Plan.PRO, "user")
        await engine.dispose()
        yield url, operator, user


class Dlq:
    """`imagegen dlq ...` in-process (in a thread: the CLI runs its own event loop)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], infra: Any, prefix: str, db: str):
        self.capsys, self.common = (
            capsys,
            [
                "--bootstrap",
                infra.kafka_bootstrap,
                "--prefix",
                prefix,
                "--database-url",
                db,
            ],
        )

    async def __call__(self, key: str, *argv: str) -> tuple[int, str, str]:
        def call() -> int:
            try:
                return cli(["dlq", *argv, *self.common, "--key", key])
            except SystemExit as stop:
                return int(stop.code or 0)

        code = await asyncio.to_thread(call)
        out = self.capsys.readouterr()
        return code, out.out, out.err

    async def letters(self, key: str, group: str) -> list[dict[str, Any]]:
        code, out, err = await self(key, "list", "--group", group, "--json")
        assert code == 0, err
        return list(json.loads(out)["letters"])


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for ``condition`` (checked every 50 ms) or fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def high_watermarks(bootstrap: str, topic: str) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4()}"})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts]
    finally:
        c.close()


async def running(consumers: list[FastStreamConsumer], body: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    try:
        await body()
    finally:
        stop.set()
        for task in tasks:
            await asyncio.wait_for(task, 30)


async def test_list_show_redrive_a_poison_record_for_its_group_only_and_refuse_a_second(
    infra: Any, topics: str, keys: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    db, operator, user = keys
    dlq = Dlq(capsys, infra, topics, db)
    pub = KafkaPublisher(infra.kafka_bootstrap, "safety", topics)
    job = str(uuid.uuid4())
    group, other = f"{topics}dlq-{job[:6]}", f"{topics}dlq-other-{job[:6]}"
    poison = await pub.publish(CancellationRequested(job_id=job, requested_by="u"), key=job)
    broken = True
    handled: list[str] = []  # redrive-of header of each successful handling of the poison record
    other_saw: list[str] = []

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.event_id != poison.event_id:
            return
        if broken:
            raise ValueError("a bug this record hits every time")
        handled.append(meta.headers.get(REDRIVE_OF, ""))

    async def handle_other(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.event_id == poison.event_id:
            other_saw.append(meta.headers.get(REDRIVE_OF, ""))

    topic = topics + REQUESTED
    fails = FastStreamConsumer(
        infra.kafka_bootstrap, group, [topic], handle, pub, max_attempts=2, backoff_s=0.01
    )
    fine = FastStreamConsumer(infra.kafka_bootstrap, other, [topic], handle_other, pub)

    async def body() -> None:
        nonlocal broken
        await until(lambda: fails.dead_lettered == 1, 60, "the poison record's dead letter")
        await until(lambda: other_saw == [""], 60, "the other group handling the original")

        (letter,) = await dlq.letters(operator, group)
        assert letter["job_id"] == job and letter["source_topic"] == topic
        assert "ValueError" in letter["error"] and letter["redriven"] is False
        code, out, err = await dlq(operator, "list", "--group", group)
        assert code == 0, err
        assert letter["id"] in out and job in out and "[new]" in out and "ValueError" in out

        code, out, err = await dlq(operator, "show", letter["id"][:8])
        assert code == 0, err
        assert f'"event_id": "{poison.event_id}"' in out and "a bug this record hits" in out
        code, out, err = await dlq(operator, "show", letter["id"], "--json")
        shown = json.loads(out)
        assert shown["original"]["event_id"] == poison.event_id
        assert shown["original_headers"]["ce_id"] == poison.event_id

        broken = False  # the bug is fixed
        code, out, err = await dlq(operator, "redrive", letter["id"])
        assert code == 0, err
        assert f"{letter['id']} redrive 1 for group {group} -> {topic}[" in out
        await until(lambda: handled == [letter["id"]], 60, "the redriven copy handled")
        await until(lambda: fine.skipped_redrives == 1, 60, "the other group skipping the copy")
        assert other_saw == [""], "the other group handled the redriven copy"

        (after,) = await dlq.letters(operator, group)
        assert after["redriven"] is True and after["failed_again_as"] == []
        marks = high_watermarks(infra.kafka_bootstrap, topic)
        code, out, err = await dlq(operator, "redrive", letter["id"])
        assert code == 1 and "redriven already" in err and "--force" in err
        assert high_watermarks(infra.kafka_bootstrap, topic) == marks

    try:
        await running([fails, fine], body)
    finally:
        await pub.close()
    assert fails.dead_lettered == 1 and handled == [handled[0]]
    failed = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + ENDED, 10_000, 5)
        if e.correlation_id == job
    ]
    assert [(parse(e).reason, e.causation_id) for e in failed] == [  # type: ignore[attr-defined]
        (FailureReason.POISON_EVENT, poison.event_id)
    ]


async def test_a_redrive_that_fails_again_returns_with_both_errors_and_never_loops(
    infra: Any, topics: str, keys: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    db, operator, _ = keys
    dlq = Dlq(capsys, infra, topics, db)
    pub = KafkaPublisher(infra.kafka_bootstrap, "safety", topics)
    job = str(uuid.uuid4())
    group = f"{topics}dlq-again-{job[:6]}"
    poison = await pub.publish(CancellationRequested(job_id=job, requested_by="u"), key=job)
    attempts: list[str] = []  # redrive-of header of each attempt at the poison record
    marker_seen = asyncio.Event()
    marker_id = ""

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.event_id == marker_id:
            marker_seen.set()
        if env.event_id != poison.event_id:
            return
        attempts.append(meta.headers.get(REDRIVE_OF, ""))
        raise ValueError("bug number 2" if meta.headers.get(REDRIVE_OF) else "bug number 1")

    topic = topics + REQUESTED
    loop = FastStreamConsumer(
        infra.kafka_bootstrap, group, [topic], handle, pub, max_attempts=2, backoff_s=0.01
    )

    async def body() -> None:
        nonlocal marker_id
        await until(lambda: loop.dead_lettered == 1, 60, "the first dead letter")
        (first,) = await dlq.letters(operator, group)
        code, out, err = await dlq(operator, "redrive", first["id"])
        assert code == 0, err
        await until(lambda: loop.dead_lettered == 2, 60, "the redriven copy's dead letter")
        # A record after the copy on the same key (same partition): once it is handled, the
        # consumer is past the copy, and nothing put a third attempt before it.
        marker = await pub.publish(CancellationRequested(job_id=job, requested_by="m"), key=job)
        marker_id = marker.event_id
        await asyncio.wait_for(marker_seen.wait(), 60)

    try:
        await running([loop], body)
    finally:
        await pub.close()
    assert loop.dead_lettered == 2
    assert attempts == ["", ""] + [attempts[2]] * 2 and attempts[2] != ""

    letters = await dlq.letters(operator, group)
    assert len(letters) == 2
    first, second = letters
    assert first["redriven"] is True and first["failed_again_as"] == [second["id"]]
    assert second["redrive_of"] == first["id"] and second["redrives"] == 1
    assert second["redriven"] is False
    code, out, err = await dlq(operator, "show", second["id"], "--json")
    assert code == 0, err
    errors = json.loads(out)["errors"]
    assert len(errors) == 2 and "bug number 1" in errors[0] and "bug number 2" in errors[1]
    code, out, err = await dlq(operator, "list", "--group", group)
    assert f"failed again as {second['id'][:8]}" in out

    # `--all` never picks the failed copy (nor the letter already redriven): no loop by script.
    code, out, err = await dlq(operator, "redrive", "--all", "--dry-run")
    assert code == 0, err
    assert first["id"] not in out and second["id"] not in out
    # The job got one terminal failure, from the first dead letter, none from the second.
    failed = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + ENDED, 10_000, 5)
        if e.correlation_id == job
    ]
    assert len(failed) == 1 and failed[0].causation_id == poison.event_id


async def test_a_key_that_is_not_an_operators_is_refused_and_nothing_is_published(
    infra: Any, topics: str, keys: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    db, operator, user = keys
    dlq = Dlq(capsys, infra, topics, db)
    pub = KafkaPublisher(infra.kafka_bootstrap, "safety", topics)
    job = str(uuid.uuid4())
    group = f"{topics}dlq-refused-{job[:6]}"
    poison = await pub.publish(CancellationRequested(job_id=job, requested_by="u"), key=job)

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.event_id == poison.event_id:
            raise ValueError("bug")

    topic = topics + REQUESTED
    loop = FastStreamConsumer(
        infra.kafka_bootstrap, group, [topic], handle, pub, max_attempts=1, backoff_s=0.01
    )

    async def body() -> None:
        await until(lambda: loop.dead_lettered == 1, 60, "the dead letter")

    try:
        await running([loop], body)
    finally:
        await pub.close()
    (letter,) = await dlq.letters(operator, group)
    before = (
        high_watermarks(infra.kafka_bootstrap, topic),
        high_watermarks(infra.kafka_bootstrap, topics + REDRIVE_TOPIC),
    )
    for key in (user, "igk_not-a-key-at-all"):
        for argv in (("list",), ("show", letter["id"]), ("redrive", letter["id"])):
            code, out, err = await dlq(key, *argv)
            assert code == 2 and out == "", (argv, out)
            assert "refused" in err
        assert ("role 'user', not 'operator'" in err) == (key == user), err
    after = (
        high_watermarks(infra.kafka_bootstrap, topic),
        high_watermarks(infra.kafka_bootstrap, topics + REDRIVE_TOPIC),
    )
    assert after == before
    (still,) = await dlq.letters(operator, group)
    assert still["redriven"] is False


async def test_a_redrive_publishes_nothing_when_the_redrive_topic_is_missing(
    infra: Any, topics: str
) -> None:
    """A broker without ``imagegen.deadletter.redrives`` (topics not created since the upgrade):
    the copy must not go out when its redrive cannot be recorded."""
    from imagegen_runtime.dlq import Letter, MissingTopic, redrive_many
    from imagegen_schemas.workers import DeadLettered

    topic = topics + REQUESTED
    letter = Letter(
        "aaaaaaaa-0000-4000-8000-000000000000",
        datetime.now(UTC),
        "nowhere",
        DeadLettered(
            source_topic=topic,
            source_partition=0,
            source_offset=0,
            consumer_group="g",
            error="e",
            original_value_b64="e30=",
        ),
    )
    marks = high_watermarks(infra.kafka_bootstrap, topic)
    with pytest.raises(MissingTopic, match="imagegen topics create"):
        await redrive_many(
            infra.kafka_bootstrap, f"missing{uuid.uuid4().hex[:6]}.", None, letters=[letter]
        )
    assert high_watermarks(infra.kafka_bootstrap, topic) == marks
