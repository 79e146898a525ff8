"""Read imagegen's job events with FastStream, drop duplicates by event id, print JSON lines.

    .venv/bin/python examples/python-consumer/consumer.py --bootstrap 127.0.0.1:29092 \\
        --topics 'imagegen.jobs.*' --max-events 10 --timeout 60

Reads from the beginning in its own consumer group (``--group``), parses each record with
``imagegen_schemas`` (envelope, then the typed payload through the registry, upcasters applied),
skips a record whose event id it has already printed (delivery is at least once), and prints one
JSON object per event on stdout. At the end it prints a summary on stderr. Exit status: 0 when
``--max-events`` were printed (or, without it, when ``--timeout`` ran out), 3 when the timeout ran
out first, 2 on bad arguments. LZ4 needs nothing here: librdkafka decodes it. See
docs/consumers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import logging
import sys
import uuid
from typing import Any

from faststream.confluent import KafkaBroker
from faststream.confluent.annotations import KafkaMessage
from faststream.middlewares import AckPolicy

from imagegen_schemas import TOPICS, Envelope, UnknownEventType, parse


def select_topics(patterns: list[str], prefix: str) -> list[str]:
    """Catalog topics matching any glob (``imagegen.jobs.*``), with the deployment's prefix."""
    names = [t.name for t in TOPICS if any(fnmatch.fnmatch(t.name, p) for p in patterns)]
    if not names:
        known = ", ".join(t.name for t in TOPICS)
        raise SystemExit(f"--topics {' '.join(patterns)!r} matches no topic; known: {known}")
    return [prefix + n for n in names]


class Printer:
    """Dedup by event id and print; in production keep the seen ids in your store."""

    def __init__(self, max_events: int | None) -> None:
        self.max_events = max_events
        self.seen: set[str] = set()
        self.printed = 0
        self.duplicates = 0
        self.unparseable = 0
        self.done = asyncio.Event()

    def on_record(self, value: bytes, key: bytes | None, where: dict[str, Any]) -> None:
        try:
            envelope = Envelope.from_json(value)
        except ValueError as exc:  # not an imagegen envelope: say where, go on
            self.unparseable += 1
            sys.stderr.write(f"skipped an unparseable record at {where}: {exc}\n")
            return
        if envelope.event_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(envelope.event_id)
        line: dict[str, Any] = {
            "event_id": envelope.event_id,
            "type": envelope.type,
            "schema_version": envelope.schema_version,
            "occurred_at": envelope.occurred_at.isoformat(),
            "key": key.decode() if key else None,
            "correlation_id": envelope.correlation_id,
            "causation_id": envelope.causation_id,
            **where,
        }
        try:
            payload = parse(envelope)
        except UnknownEventType as exc:  # a newer producer: keep going, say what was skipped
            line["payload_type"] = None
            line["unparsed"] = str(exc)
        else:
            line["payload_type"] = type(payload).__name__
            line["data"] = payload.model_dump(mode="json")
        sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
        sys.stdout.flush()
        self.printed += 1
        if self.max_events is not None and self.printed >= self.max_events:
            self.done.set()


async def consume(args: argparse.Namespace) -> int:
    topics = select_topics(args.topics, args.topic_prefix)
    printer = Printer(args.max_events)
    broker = KafkaBroker(
        args.bootstrap,
        logger=logging.getLogger("example.faststream"),
        allow_auto_create_topics=False,
    )
    subscriber = broker.subscriber(
        *topics,
        group_id=args.group,
        auto_offset_reset="earliest",  # a new group reads from the beginning
        ack_policy=AckPolicy.ACK,  # commit after the handler returned: at least once
    )

    @subscriber
    async def handle(message: KafkaMessage) -> None:
        raw = message.raw_message
        where = {
            "topic": raw.topic(),  # type: ignore[union-attr]
            "partition": raw.partition(),  # type: ignore[union-attr]
            "offset": raw.offset(),  # type: ignore[union-attr]
        }
        printer.on_record(message.body, raw.key(), where)  # type: ignore[union-attr]

    reached = True
    async with broker:
        await broker.start()
        try:
            await asyncio.wait_for(printer.done.wait(), timeout=args.timeout)
        except TimeoutError:
            reached = args.max_events is None
    summary = {"printed": printer.printed, "duplicates_skipped": printer.duplicates}
    if printer.unparseable:
        summary["unparseable_skipped"] = printer.unparseable
    sys.stderr.write(json.dumps(summary) + "\n")
    return 0 if reached else 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:29092", help="Kafka bootstrap servers")
    ap.add_argument(
        "--topics", nargs="+", default=["imagegen.jobs.*"], help="catalog topic names or globs"
    )
    ap.add_argument("--topic-prefix", default="", help="the deployment's topic prefix, if any")
    ap.add_argument("--group", default=f"example-python-{uuid.uuid4().hex[:8]}")
    ap.add_argument("--max-events", type=int, default=None, help="stop after N unique events")
    ap.add_argument("--timeout", type=float, default=30.0, help="stop after this many seconds")
    args = ap.parse_args(argv)
    if args.max_events is not None and args.max_events < 1:
        ap.error("--max-events must be >= 1")
    if args.timeout <= 0:
        ap.error("--timeout must be > 0")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(consume(args))


if __name__ == "__main__":
    raise SystemExit(main())
