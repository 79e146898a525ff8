"""Webhooks end to end on the real Kafka broker and PostgreSQL (integration: ``make infra-up``).

Delivery runs in-process (bootstrap: its consumer, dispatcher and PostgreSQL webhook store);
a local receiver answers per path. Issue 14 regressions: a failed or cancelled job now sends a
webhook; a failing receiver is retried through the retry topic with the same ``webhook-id`` (not
given up after ~3.5 s), then dead-lettered, and ``imagegen webhooks redeliver`` resends it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from delivery_testkit import SIGNING_KEY
from standardwebhooks.webhooks import Webhook

from imagegen.webhooks import DEAD_TOPIC, publish_rounds, read_dead_letters, select
from imagegen_delivery.adapters.webhook_store import PgWebhookStore
from imagegen_delivery.bootstrap import bootstrap
from imagegen_delivery.config import DeliverySettings
from imagegen_runtime.db import make_engine
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.service import run_until
from imagegen_schemas.common import GenerationParams, Plan, Tier
from imagegen_schemas.jobs import (
    FailureReason,
    GenerationCancelled,
    GenerationFailed,
    GenerationRequested,
)

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    """Answers ``answers[path]`` in turn (then its last one again); records every call."""

    answers: dict[str, list[int]]
    calls: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=dict)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        path = head[0].split(" ")[1]
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in head[1:] if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        seen = self.calls.setdefault(path, [])
        seen.append((headers, body))
        answers = self.answers[path]
        status = answers[min(len(seen), len(answers)) - 1]
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver({"/flaky": [503, 503, 200], "/down": [503]})
    server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    r.port = server.sockets[0].getsockname()[1]
    yield r
    server.close()


def request(job_id: str, user: str, url: str) -> GenerationRequested:
    params = GenerationParams(
        prompt="a red circle",
        model="shapes-demo",
        width=64,
        height=64,
        steps=2,
        guidance_scale=5.0,
        seed=1,
    )
    return GenerationRequested(
        job_id=job_id, user_id=user, plan=Plan.FREE, tier=Tier.RELAX, params=params, webhook_url=url
    )


async def test_failed_and_cancelled_jobs_are_signed_retried_dead_lettered_and_redelivered(
    infra,
    topics: str,
    receiver: Receiver,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings = DeliverySettings(
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topics,
        database_url=infra.database_url,
        signing_key=SIGNING_KEY,
        store_dir=tmp_path / "store",
        webhook_allow="127.0.0.0/8",
        webhook_retry_schedule_s=(0.2, 0.4),
        instance_id=f"wh{uuid.uuid4().hex[:6]}",
    )
    engine = make_engine(infra.database_url, pool_size=4)
    hooks = PgWebhookStore(engine, prefix=f"t{uuid.uuid4().hex[:8]}_")
    publisher = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    user, a, b = f"u-{uuid.uuid4().hex[:6]}", str(uuid.uuid4()), str(uuid.uuid4())
    base = f"http://127.0.0.1:{receiver.port}"
    try:
        # Outcome before request for job b: the join does not depend on the order.
        await publisher.publish(request(a, user, f"{base}/flaky"), key=a)
        failed = await publisher.publish(
            GenerationFailed(job_id=a, reason=FailureReason.OUT_OF_MEMORY), key=a
        )
        cancelled = await publisher.publish(GenerationCancelled(job_id=b, at_step=1), key=b)
        await publisher.publish(request(b, user, f"{base}/down"), key=b)

        async def settled() -> bool:
            sa = await hooks.status_of(failed.event_id)
            sb = await hooks.status_of(cancelled.event_id)
            return sa is not None and sa[0] == "delivered" and sb is not None and sb[0] == "dead"

        await run_until(bootstrap(settings, hooks=hooks), settled, timeout_s=90)

        flaky, down = receiver.calls["/flaky"], receiver.calls["/down"]
        assert len(flaky) == 3 and len(down) == 3  # first call + the two scheduled retries
        assert {h["webhook-id"] for h, _ in flaky} == {failed.event_id}
        assert {h["webhook-id"] for h, _ in down} == {cancelled.event_id}
        [secret] = await hooks.secrets(user, datetime.now(UTC))
        for headers, body in flaky + down:
            doc = Webhook(secret).verify(body, headers)  # the receiver's check, from the library
            assert doc["job_id"] in (a, b)
        assert json.loads(flaky[0][1])["type"] == "generation.failed"
        assert json.loads(down[0][1])["type"] == "generation.cancelled"
        assert (await hooks.status_of(cancelled.event_id))[3] == "answered 503"  # type: ignore[index]

        letters = list(read_dead_letters(infra.kafka_bootstrap, topics + DEAD_TOPIC, None))
        [dead] = select(letters, {cancelled.event_id}, None, None)
        assert dead.attempts == 3 and dead.reason == "answered 503" and dead.user_id == user

        receiver.answers["/down"] = [200]  # the receiver is fixed; the operator resends
        await publish_rounds(infra.kafka_bootstrap, topics, [dead])

        async def redelivered() -> bool:
            s = await hooks.status_of(cancelled.event_id)
            return s is not None and s[0] == "delivered"

        await run_until(bootstrap(settings, hooks=hooks), redelivered, timeout_s=90)
        assert len(receiver.calls["/down"]) == 4
        assert receiver.calls["/down"][3][0]["webhook-id"] == cancelled.event_id
        assert receiver.calls["/down"][3][1] == down[0][1]  # byte for byte the same body
        assert len(receiver.calls["/flaky"]) == 3  # nothing sent twice after the restart
    finally:
        await publisher.close()
        await hooks.drop()
        await engine.dispose()


def test_the_secret_command_prints_creates_once_and_rotates(
    infra,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    from imagegen.cli import main

    user = f"u-{uuid.uuid4().hex[:8]}"
    argv = ["webhooks", "secret", "--user", user, "--database-url", infra.database_url]
    assert main(argv) == 0 and main(argv) == 0
    first, again = capsys.readouterr().out.split()
    assert first.startswith("whsec_") and again == first
    assert main([*argv, "--rotate", "--overlap-s", "3600"]) == 0
    rotated = capsys.readouterr().out.strip()
    assert rotated.startswith("whsec_") and rotated != first
    assert main(argv) == 0 and capsys.readouterr().out.strip() == rotated

    async def active() -> list[str]:
        engine = make_engine(infra.database_url, pool_size=1)
        try:
            return await PgWebhookStore(engine).secrets(user, datetime.now(UTC))
        finally:
            await engine.dispose()

    assert asyncio.run(active()) == [rotated, first]  # both sign during the overlap
    assert main(["webhooks", "secret", "--user", "", "--database-url", "x"]) == 2
