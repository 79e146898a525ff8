"""The example consumers (examples/python-consumer, examples/node-consumer) against the real broker.

One job's events are published with our KafkaPublisher (LZ4, as the services publish), one of
them twice with the same event id (a redelivery); each example runs as a subprocess, from the
beginning in its own group, and must print every event once, with its type and id.

The Node example needs its modules: ``npm ci --prefix examples/node-consumer``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagegen_runtime.kafka import KafkaPublisher, ensure_topics, producer_config
from imagegen_schemas import Envelope, ce_headers, parse
from imagegen_schemas.jobs import CancellationRequested

ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "schemas" / "examples"
PYTHON_EXAMPLE = ROOT / "examples" / "python-consumer" / "consumer.py"
NODE_DIR = ROOT / "examples" / "node-consumer"
NODE = shutil.which("node")

pytestmark = pytest.mark.integration

# Goldens of one job's life on the imagegen.jobs.* topics.
LIFE = [
    "imagegen.generation.requested.v1.json",
    "imagegen.job.scheduled.v1.json",
    "imagegen.generation.started.v1.json",
    "imagegen.image.generated.v1.json",
    "imagegen.image.delivered.v1.json",
]


@dataclass(frozen=True)
class Published:
    prefix: str  # the topic prefix the examples must be given
    job: str
    unique: list[Envelope]  # every distinct event, in publish order
    duplicate_of: str  # the event id that was published twice


GARBAGE = b"{not an envelope"


def again_topic(prefix: str) -> str:
    return prefix + "imagegen.jobs.requested"


async def _publish(bootstrap: str, prefix: str) -> Published:
    assert producer_config()["compression.type"] == "lz4"
    pub = KafkaPublisher(bootstrap, "examples-test", prefix)
    job = str(uuid.uuid4())
    sent: list[Envelope] = []
    try:
        for name in LIFE:
            golden = Envelope.from_json((GOLDENS / name).read_text())
            payload = parse(golden).model_copy(update={"job_id": job})
            sent.append(await pub.publish(payload, key=job))
            if name == LIFE[0]:
                # The same event again (a producer retry or a redelivery), in the same partition
                # and before the next record there: a consumer must skip it by id.
                again = await pub.publish(payload, key=job, event_id=sent[0].event_id)
                assert again.event_id == sent[0].event_id
                # A record that is no envelope at all (a foreign producer): skipped, said so.
                await pub.send_raw(again_topic(prefix), job.encode(), GARBAGE, [])
                sent.append(
                    await pub.publish(
                        CancellationRequested(job_id=job, requested_by="u-examples"), key=job
                    )
                )
        # A breaking v2 from a newer producer: printed as unparsed, not guessed at.
        newer = sent[-1].model_copy(update={"event_id": str(uuid.uuid4()), "schema_version": 2})
        topic = prefix + "imagegen.jobs.delivered"
        await pub.send_raw(topic, job.encode(), newer.to_json(), ce_headers(newer))
        sent.append(newer)
    finally:
        await pub.close()
    return Published(prefix, job, sent, sent[0].event_id)


@pytest.fixture(scope="module")
def published(infra: Any, topics: str) -> Published:
    # A sub-prefix of the session's: these topics hold only this job's records, so the examples
    # can stop at a known count (other tests of the session publish under ``topics``).
    prefix = f"{topics}ex{uuid.uuid4().hex[:6]}."
    ensure_topics(infra.kafka_bootstrap, prefix)
    return asyncio.run(_publish(infra.kafka_bootstrap, prefix))


def _run(cmd: list[str], timeout: float = 120) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines, done.stderr


def _summary(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        if line.startswith("{") and "printed" in line:
            summary: dict[str, Any] = json.loads(line)
            return summary
    raise AssertionError(f"no summary line on stderr:\n{stderr}")


def _assert_every_event_once(lines: list[dict[str, Any]], published: Published) -> None:
    ids = [line["event_id"] for line in lines]
    assert len(ids) == len(set(ids)), f"an event was printed twice: {ids}"
    want = {e.event_id: e for e in published.unique}
    assert set(ids) == set(want)
    for line in lines:
        env = want[line["event_id"]]
        assert line["type"] == env.type
        assert line["schema_version"] == env.schema_version
        if env.schema_version == 2:
            assert "data" not in line
            assert "imagegen.image.delivered v2 is newer than this" in line["unparsed"]
        else:
            assert "unparsed" not in line and line["data"]["job_id"] == published.job
        assert line["key"] == line["correlation_id"] == published.job
        assert line["topic"].startswith(published.prefix + "imagegen.jobs.")
    # Per key (one partition per topic) the order is the publish order.
    requested = [line["event_id"] for line in lines if line["topic"].endswith(".requested")]
    assert requested == [published.unique[0].event_id, published.unique[1].event_id]


def test_python_example_prints_each_event_once(infra: Any, published: Published) -> None:
    rc, lines, stderr = _run(
        [
            sys.executable,
            str(PYTHON_EXAMPLE),
            "--bootstrap",
            infra.kafka_bootstrap,
            "--topic-prefix",
            published.prefix,
            "--topics",
            "imagegen.jobs.*",
            "--group",
            f"ex-py-{uuid.uuid4().hex[:6]}",
            "--max-events",
            str(len(published.unique)),
            "--timeout",
            "90",
        ]
    )
    assert rc == 0, stderr
    _assert_every_event_once(lines, published)
    types = {(line["type"], line["schema_version"]): line["payload_type"] for line in lines}
    assert types["imagegen.generation.requested", 1] == "GenerationRequested"
    assert types["imagegen.image.delivered", 1] == "ImageDelivered"
    assert types["imagegen.image.delivered", 2] is None
    assert _summary(stderr) == summary_of(published)


def summary_of(published: Published) -> dict[str, int]:
    return {
        "printed": len(published.unique),
        "duplicates_skipped": 1,
        "unparseable_skipped": 1,
    }


def _node_ready() -> None:
    if NODE is None:
        pytest.skip("node is not installed (Debian: apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "kafkajs-lz4").is_dir():
        pytest.skip("node modules missing: run `npm ci --prefix examples/node-consumer`")


def _node_cmd(infra: Any, published: Published, *extra: str) -> list[str]:
    assert NODE is not None
    return [
        NODE,
        str(NODE_DIR / "consumer.js"),
        "--bootstrap",
        infra.kafka_bootstrap,
        "--topic-prefix",
        published.prefix,
        "--topics",
        "imagegen.jobs.*",
        "--group",
        f"ex-node-{uuid.uuid4().hex[:6]}",
        "--max-events",
        str(len(published.unique)),
        *extra,
    ]


def test_node_example_with_kafkajs_lz4_prints_each_event_once(
    infra: Any, published: Published
) -> None:
    _node_ready()
    rc, lines, stderr = _run(_node_cmd(infra, published, "--timeout", "90"))
    assert rc == 0, stderr
    _assert_every_event_once(lines, published)
    for line in lines:  # the CloudEvents headers arrive and agree with the envelope
        assert line["ce_id"] == line["event_id"] and line["ce_type"] == line["type"]
    assert _summary(stderr) == summary_of(published)


def test_node_example_without_the_lz4_codec_reads_nothing(infra: Any, published: Published) -> None:
    """The records really are LZ4 batches: kafkajs alone cannot read them."""
    _node_ready()
    rc, lines, stderr = _run(_node_cmd(infra, published, "--timeout", "60", "--without-lz4-codec"))
    assert rc == 4, stderr
    assert lines == []
    assert "LZ4 compression not implemented" in stderr


def test_records_on_the_wire_match_the_asyncapi_document(infra: Any, published: Published) -> None:
    """Headers and values as a consumer receives them validate against docs/asyncapi.json."""
    import jsonschema
    from confluent_kafka import Consumer

    doc = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    reader = Consumer(
        {
            "bootstrap.servers": infra.kafka_bootstrap,
            "group.id": f"ex-wire-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    names = sorted(published.prefix + t for t in doc["channels"] if t.startswith("imagegen.jobs."))
    reader.subscribe(names)
    records = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < len(published.unique) + 2 and time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is not None and not msg.error():
                records.append(msg)
    finally:
        reader.close()
    # The duplicate and the garbage record are on the wire too.
    assert len(records) == len(published.unique) + 2
    assert [m.value() for m in records].count(GARBAGE) == 1
    versions = [
        json.loads(m.value()).get("schema_version") for m in records if m.value() != GARBAGE
    ]
    assert versions.count(2) == 1
    for msg in (m for m in records if m.value() != GARBAGE):
        if json.loads(msg.value())["schema_version"] == 2:
            continue  # the newer producer's record: the document (v1) rightly does not cover it
        channel = doc["channels"][msg.topic().removeprefix(published.prefix)]
        ref = next(iter(channel["messages"].values()))["$ref"]
        message = doc["components"]["messages"][ref.rsplit("/", 1)[1]]
        headers = {k: (v or b"").decode() for k, v in msg.headers() or []}
        assert len(headers) == len(msg.headers() or []), "a header name repeats"
        assert set(headers) <= set(message["headers"]["properties"]), sorted(headers)
        jsonschema.validate(headers, message["headers"])
        payload = doc["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[1]]
        jsonschema.validate(json.loads(msg.value()), {**payload, "components": doc["components"]})
        assert msg.key().decode() == published.job  # the key the message binding names
