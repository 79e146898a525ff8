"""The revocation log's contract, held by the Kafka adapter and by the in-memory fake alike.

A partition holds, in order: an image, a revocation, a record that does not parse, another
revocation and another image. A read returns the revocations in ``[start, end)`` with their
offsets, whatever else lies between, and a range past the end stops at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

import pytest
from safety_testkit import envelope_of, generated

from imagegen_runtime.kafka import KafkaPublisher, ensure_topics
from imagegen_safety.adapters.fakes import InMemoryRevocationLog
from imagegen_safety.adapters.revocation_log import KafkaRevocationLog
from imagegen_safety.config import GENERATED
from imagegen_safety.service_layer.revocations import RevocationLog
from imagegen_schemas import Envelope, ce_headers
from imagegen_schemas.jobs import AssignmentRevoked

JOB = "job-1"
REVOKED_3 = AssignmentRevoked(job_id=JOB, worker_id="worker-1", fencing_token=3)
REVOKED_4 = AssignmentRevoked(job_id=JOB, worker_id="worker-2", fencing_token=4)
POISON = b"{not json"
RECORDS: list[Envelope | bytes] = [
    envelope_of(generated((), job_id=JOB)),
    envelope_of(REVOKED_3),
    POISON,
    envelope_of(REVOKED_4),
    envelope_of(generated((), job_id=JOB)),
]

Written = tuple[RevocationLog, str, int]  # the log, and the topic and partition holding RECORDS


async def fake_log(request: pytest.FixtureRequest) -> Written:
    log = InMemoryRevocationLog()
    for record in RECORDS:
        if isinstance(record, bytes):
            log.append_raw(GENERATED, record)
        else:
            log.append(GENERATED, record)
    return log, GENERATED, 0


async def kafka_log(request: pytest.FixtureRequest) -> Written:
    infra = request.getfixturevalue("infra")
    prefix = f"{request.getfixturevalue('topics')}rl{uuid.uuid4().hex[:6]}."
    ensure_topics(infra.kafka_bootstrap, prefix)
    topic = prefix + GENERATED
    publisher = KafkaPublisher(infra.kafka_bootstrap, "contract", prefix)
    written = set()
    try:
        for record in RECORDS:  # one key, so one partition, in this order
            if isinstance(record, bytes):  # claims to be a revocation but does not parse
                value, headers = record, [("ce_type", AssignmentRevoked.event_type.encode())]
            else:
                value, headers = record.to_json(), list(ce_headers(record))
            written.add(await publisher.send_raw(topic, JOB.encode(), value, headers))
    finally:
        await publisher.close()
    [partition] = {p for p, _ in written}
    assert sorted(o for _, o in written) == list(range(len(RECORDS)))  # a fresh topic
    return KafkaRevocationLog(infra.kafka_bootstrap, timeout_s=10), topic, partition


LOGS: dict[str, Callable[[pytest.FixtureRequest], Awaitable[Written]]] = {
    "fake": fake_log,
    "kafka": kafka_log,
}


@pytest.fixture(
    params=[
        pytest.param("fake", marks=pytest.mark.unit),
        pytest.param("kafka", marks=pytest.mark.integration),
    ]
)
async def written(request: pytest.FixtureRequest) -> Written:
    return await LOGS[request.param](request)


def tokens(found: Sequence[tuple[int, AssignmentRevoked]]) -> list[tuple[int, int]]:
    return [(offset, revoked.fencing_token) for offset, revoked in found]


async def test_a_read_returns_the_revocations_in_range_with_their_offsets(written: Written) -> None:
    log, topic, p = written
    assert tokens(await log.read(topic, p, 0, 5)) == [(1, 3), (3, 4)]
    assert tokens(await log.read(topic, p, 2, 4)) == [(3, 4)]
    assert tokens(await log.read(topic, p, 0, 1)) == []


async def test_a_range_past_the_end_stops_at_the_end(written: Written) -> None:
    log, topic, p = written
    assert tokens(await log.read(topic, p, 2, 1000)) == [(3, 4)]
    assert tokens(await log.read(topic, p, 5, 1000)) == []


async def test_an_empty_range_reads_nothing(written: Written) -> None:
    log, topic, p = written
    assert tokens(await log.read(topic, p, 3, 3)) == []
