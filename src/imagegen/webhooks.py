"""``imagegen webhooks``: a user's webhook signing secret, and resending dead-lettered calls.

    imagegen webhooks secret --user U [--rotate] [--overlap-s S] [--database-url URL]
    imagegen webhooks redeliver (--id MESSAGE_ID ... | --user U | --since T) [--since T]
        [--dry-run] [--bootstrap HOST:PORT] [--prefix P]

``secret`` prints the user's newest ``whsec_`` secret, creating one if the user has none.
``--rotate`` makes a new one; the old ones keep signing (a second ``v1,`` signature in
``webhook-signature``) for ``--overlap-s`` seconds (default one day), so receivers can switch.

``redeliver`` reads the webhook dead-letter topic (from ``--since``, else from its start),
keeps the newest dead letter of each message that matches every filter given, and publishes
each one's first attempt of a new round on the retry topic; delivery then calls it with the same
``webhook-id`` and body (checked by the SSRF guard again) and the full retry schedule. Running
it twice for the same dead letters publishes the same records, which delivery drops.
``T`` is ISO-8601 or back from now (``30m``, ``24h``, ``7d``), as for ``imagegen usage``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

DEAD_TOPIC = "imagegen.webhooks.deadletter"


class WebhooksInputError(ValueError):
    """Bad input to ``imagegen webhooks``; the message names the flag."""


def cmd_secret(args: argparse.Namespace) -> int:
    from imagegen_delivery.adapters.webhook_store import PgWebhookStore
    from imagegen_runtime.db import make_engine

    from .cli import stack_setting

    if not 1 <= len(args.user) <= 128:
        print(f"--user: 1 to 128 characters, got {len(args.user)}", file=sys.stderr)
        return 2
    if args.overlap_s < 0:
        print("--overlap-s: must be 0 or more seconds", file=sys.stderr)
        return 2
    url = args.database_url or stack_setting("DATABASE_URL")
    if not url:
        print("no database: pass --database-url or run `make up` first", file=sys.stderr)
        return 2

    async def go() -> str:
        engine = make_engine(url, pool_size=1)
        try:
            store = PgWebhookStore(engine)
            now = datetime.now(UTC)
            if args.rotate:
                return await store.rotate(args.user, now, timedelta(seconds=args.overlap_s))
            return (await store.secrets(args.user, now))[0]
        finally:
            await engine.dispose()

    print(asyncio.run(go()))
    return 0


def read_dead_letters(bootstrap: str, topic: str, since: datetime | None) -> Iterator[Any]:
    """Every WebhookDeadLettered on ``topic`` from ``since`` (else its start) to its end now."""
    from imagegen_schemas import parse
    from imagegen_schemas.webhooks import WebhookDeadLettered

    from .replay import MissingTopic, envelopes_since

    try:
        for envelope in envelopes_since(bootstrap, topic, since):
            if envelope.type == WebhookDeadLettered.event_type:
                yield envelope.occurred_at, parse(envelope)
    except MissingTopic as exc:
        raise WebhooksInputError(str(exc)) from None


def select(
    letters: Iterable[tuple[datetime, Any]],
    ids: set[str],
    user: str | None,
    since: datetime | None,
) -> list[Any]:
    """The newest dead letter (highest round) of each message matching every filter given."""
    newest: dict[str, Any] = {}
    for at, d in letters:
        if ids and d.message_id not in ids:
            continue
        if user is not None and d.user_id != user:
            continue
        if since is not None and at < since:
            continue
        old = newest.get(d.message_id)
        if old is None or d.round > old.round:
            newest[d.message_id] = d
    return sorted(newest.values(), key=lambda d: (d.job_id, d.message_id))


async def publish_rounds(bootstrap: str, prefix: str, dead: list[Any]) -> None:
    """Publish the first attempt of the next round of each dead letter, due now."""
    from imagegen_runtime.kafka import KafkaPublisher
    from imagegen_runtime.publishing import derived_event_id
    from imagegen_schemas.webhooks import WebhookScheduled

    publisher = KafkaPublisher(bootstrap, "imagegen-cli", prefix)
    try:
        now = datetime.now(UTC)
        for d in dead:
            msg = WebhookScheduled(
                message_id=d.message_id,
                job_id=d.job_id,
                user_id=d.user_id,
                url=d.url,
                webhook_type=d.webhook_type,
                body=d.body,
                attempt=1,
                round=d.round + 1,
                due_at=now,
                last_status=d.last_status,
                last_error=f"redelivered after: {d.reason}",
            )
            await publisher.publish(
                msg,
                key=d.job_id,
                causation_id=d.message_id,
                event_id=derived_event_id(d.message_id, msg.event_type, msg.round, msg.attempt),
            )
    finally:
        await publisher.close()


def cmd_redeliver(args: argparse.Namespace) -> int:
    from .cli import _bootstrap
    from .usage import UsageInputError, parse_time

    try:
        if not (args.id or args.user or args.since):
            raise WebhooksInputError("give --id, --user or --since: which dead letters to resend")
        since = parse_time("--since", args.since, datetime.now(UTC)) if args.since else None
        bootstrap = _bootstrap(args)
        letters = read_dead_letters(bootstrap, args.prefix + DEAD_TOPIC, since)
        dead = select(letters, set(args.id or ()), args.user, since)
    except (WebhooksInputError, UsageInputError) as exc:
        print(f"imagegen webhooks redeliver: {exc}", file=sys.stderr)
        return 2
    for d in dead:
        print(f"{d.message_id} job {d.job_id} user {d.user_id} {d.webhook_type}: {d.reason}")
    if not args.dry_run and dead:
        asyncio.run(publish_rounds(bootstrap, args.prefix, dead))
    verb = "would resend" if args.dry_run else "resent"
    print(f"{verb} {len(dead)} webhook message(s)")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``imagegen webhooks`` on the CLI's subparsers."""
    p = sub.add_parser("webhooks", help="webhook secrets; resend dead-lettered webhook calls")
    wsub = p.add_subparsers(dest="webhooks_cmd", required=True)
    s = wsub.add_parser("secret", help="print a user's whsec_ secret (made if none); --rotate")
    s.add_argument("--user", required=True, help="user id")
    s.add_argument("--rotate", action="store_true", help="make a new secret; old ones overlap")
    s.add_argument(
        "--overlap-s", type=int, default=86400, help="how long old secrets still sign (s)"
    )
    s.add_argument("--database-url", default=None)
    s.set_defaults(func=cmd_secret)
    r = wsub.add_parser("redeliver", help="resend calls from the webhook dead-letter topic")
    r.add_argument("--id", action="append", help="a message id (webhook-id); repeatable")
    r.add_argument("--user", default=None, help="only this user's messages")
    r.add_argument("--since", default=None, help="dead-lettered since: ISO-8601 or 30m, 24h, 7d")
    r.add_argument("--dry-run", action="store_true", help="list what would be resent")
    r.add_argument("--bootstrap", default=None, help="Kafka host:port")
    r.add_argument("--prefix", default="", help="topic name prefix (test isolation)")
    r.set_defaults(func=cmd_redeliver)
