"""After the soak: every record of the job topics, the dead-letter topic and the webhook
dead-letter topic (calls that ran out of retries), from offset 0, and
`imagegen replay --rebuild --verify` against the soak's stack."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from datetime import datetime

from confluent_kafka import Consumer, TopicPartition

from .history import LogRecord, Verification

TOPICS = (
    "imagegen.jobs.requested",
    "imagegen.jobs.moderated",
    "imagegen.jobs.scheduled",
    "imagegen.jobs.progress",
    "imagegen.jobs.generated",
    "imagegen.jobs.delivered",
    "imagegen.jobs.ended",
    "imagegen.deadletter",
    "imagegen.webhooks.deadletter",
)
DROPPED = ("preview_png_b64", "original_value_b64")  # bulky and never checked


def to_record(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes
) -> LogRecord:
    import json

    try:
        env = json.loads(value)
        data = {k: v for k, v in dict(env.get("data") or {}).items() if k not in DROPPED}
        job_id = str(env.get("correlation_id") or (key or b"").decode(errors="replace"))
        if topic == "imagegen.deadletter" and data.get("original_key_b64"):
            job_id = base64.b64decode(data["original_key_b64"]).decode(errors="replace")
        at = datetime.fromisoformat(str(env["occurred_at"]).replace("Z", "+00:00")).timestamp()
        return LogRecord(
            topic,
            partition,
            offset,
            str(env["event_id"]),
            str(env["type"]),
            at,
            job_id,
            env.get("causation_id"),
            data,
            str(env.get("producer") or ""),
        )
    except (ValueError, KeyError, TypeError):  # malformed: kept, typed as such
        return LogRecord(
            topic,
            partition,
            offset,
            "",
            "malformed",
            0.0,
            (key or b"").decode(errors="replace"),
            None,
            {},
        )


def read_topics(
    bootstrap: str, timeout_s: float = 300, topics: tuple[str, ...] = TOPICS
) -> list[LogRecord]:
    """Every record of ``topics`` (default: the job topics and both dead-letter topics), from
    offset 0 to the end each partition had when the read began."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"imagegen-chaos-recorder-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        md = c.list_topics(timeout=30)
        ends: dict[tuple[str, int], int] = {}
        for t in topics:
            for p in md.topics[t].partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=30)
                if hi > lo:
                    ends[(t, p)] = hi
        c.assign([TopicPartition(t, p, 0) for (t, p) in ends])
        left, out = set(ends), []
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for msg in c.consume(500, 1.0):
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if msg.error() or topic is None or partition is None or offset is None:
                    continue
                tp = (topic, partition)
                if tp not in left or offset >= ends[tp]:
                    continue
                out.append(to_record(topic, partition, offset, msg.key(), msg.value() or b""))
                if offset + 1 >= ends[tp]:
                    left.discard(tp)
        if left:
            raise TimeoutError(f"could not read {sorted(left)} to their end")
        return out
    finally:
        c.close()


def verify_projection(bootstrap: str, database_url: str, env: dict[str, str]) -> Verification:
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagegen.cli",
                "replay",
                "--rebuild",
                "--verify",
                "--bootstrap",
                bootstrap,
                "--database-url",
                database_url,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,  # a rebuild writes each record to PostgreSQL: long logs take minutes
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return Verification(True, False, f"timed out after {exc.timeout}s", None)
    out = (r.stdout + r.stderr)[-20000:]
    return Verification(True, r.returncode == 0, out, r.returncode)
