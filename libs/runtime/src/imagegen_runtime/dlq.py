"""Dead letters: list them, show one, redrive them to their source topic (docs/dlq.md, ADR 0840).

The seam both the ``imagegen dlq`` CLI and the API's ``/ops`` page use; it checks no key itself
(the CLI calls :func:`require_operator` first, ``/ops`` has its operator guard):

- :func:`list_letters` reads the dead-letter topic and the redrive topic to their end now and
  returns every dead letter (a :class:`Letter`, id = its ``DeadLettered`` envelope's event id),
  with the redrives recorded for it. Blocking: call it from a thread in async code.
- :func:`redrive` / :func:`redrive_many` publish a letter's original key, value and headers to its
  source topic, with ``imagegen-redrive-*`` headers (the letter's id, the group that gave up on it,
  its errors so far), then record a ``DeadLetterRedriven`` on ``imagegen.deadletter.redrives``.
  Only the group named in ``imagegen-redrive-group`` handles the copy; the others commit it
  unhandled (they handled the original). A letter already redriven is refused unless ``force``.
  A copy that fails again is dead-lettered again, with every error and ``redrive_of``; nothing
  redrives it by itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from imagegen_schemas import TOPIC_BY_NAME, Envelope
from imagegen_schemas.workers import DeadLettered, DeadLetterRedriven

from .kafka import (
    DEADLETTER_TOPIC,
    REDRIVE_COUNT,
    REDRIVE_ERRORS,
    REDRIVE_GROUP,
    REDRIVE_OF,
    KafkaPublisher,
)
from .metrics import DLQ_REDRIVEN
from .operator_auth import OPERATOR, PgKeyRoles, hash_key
from .publishing import derived_event_id

REDRIVE_TOPIC = "imagegen.deadletter.redrives"
REDRIVE_HEADER_PREFIX = "imagegen-redrive"  # headers a redrive replaces on the copy
MIN_ID_PREFIX = 6  # the shortest letter id prefix accepted


class DlqError(ValueError):
    """A DLQ request that cannot be carried out; the message says why (and names the fix)."""


class MissingTopic(DlqError):
    """The topic does not exist on the broker."""


class NoSuchLetter(DlqError):
    """No dead letter has this id (or id prefix)."""


class AlreadyRedriven(DlqError):
    """The letter was redriven already and ``force`` was not given."""


class NotOperator(DlqError):
    """The API key is unknown, revoked, or not an operator's."""


@dataclass(frozen=True)
class Letter:
    """One dead letter, as read from the dead-letter topic, and what became of it."""

    id: str  # the DeadLettered envelope's event id
    at: datetime  # when it was dead-lettered
    where: str  # dead-letter topic[partition]@offset
    letter: DeadLettered
    redrives: tuple[DeadLetterRedriven, ...] = ()  # oldest first
    failed_again_as: tuple[str, ...] = ()  # ids of the letters its redriven copies became

    @property
    def redriven(self) -> bool:
        return bool(self.redrives)

    @property
    def errors(self) -> list[str]:
        """Every error of the record, oldest first; the last is this letter's."""
        return [*self.letter.previous_errors, self.letter.error]

    @property
    def original(self) -> Envelope | None:
        """The original record's envelope, or None when its bytes are not one."""
        try:
            return Envelope.from_json(base64.b64decode(self.letter.original_value_b64))
        except ValueError:  # binascii.Error, ValidationError, UnicodeDecodeError
            return None

    @property
    def key(self) -> bytes | None:
        b64 = self.letter.original_key_b64
        return base64.b64decode(b64) if b64 else None

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return [(h.name, base64.b64decode(h.value_b64)) for h in self.letter.original_headers]

    @property
    def job_id(self) -> str | None:
        """The job of the original record, when it names one (or its topic is keyed by job)."""
        envelope = self.original
        if envelope is not None and isinstance(envelope.data.get("job_id"), str):
            return str(envelope.data["job_id"])
        if not _keyed_by_job(self.letter.source_topic):
            return None
        if envelope is not None:
            return envelope.correlation_id
        key = self.key
        return key.decode(errors="replace") if key else None

    def summary(self) -> dict[str, Any]:
        """One line's worth, as JSON (``imagegen dlq list --json``, ``/ops``)."""
        d = self.letter
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "source_topic": d.source_topic,
            "source_partition": d.source_partition,
            "source_offset": d.source_offset,
            "consumer_group": d.consumer_group,
            "job_id": self.job_id,
            "error": first_line(d.error),
            "redrives": d.redrives,
            "redrive_of": d.redrive_of,
            "redriven": self.redriven,
            "failed_again_as": list(self.failed_again_as),
        }

    def detail(self) -> dict[str, Any]:
        """Everything (``imagegen dlq show --json``): the original decoded when it parses."""
        envelope = self.original
        return {
            **self.summary(),
            "where": self.where,
            "errors": self.errors,
            "original_key": self.key.decode(errors="replace") if self.key else None,
            "original_headers": {k: v.decode(errors="replace") for k, v in self.headers},
            "original": json.loads(envelope.to_json()) if envelope is not None else None,
            "original_value_b64": None if envelope is not None else self.letter.original_value_b64,
            "redrive_records": [r.model_dump(mode="json") for r in self.redrives],
        }


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def _keyed_by_job(topic: str) -> bool:
    return any(
        topic.endswith(name) and spec.key == "job_id" for name, spec in TOPIC_BY_NAME.items()
    )


def _read(
    bootstrap: str, topic: str, since: datetime | None, *, missing_ok: bool = False
) -> Iterator[tuple[int, int, bytes | None]]:
    """(partition, offset, value) of every record of ``topic`` from the first at or after
    ``since`` (else the start) up to its end now. Raises MissingTopic (unless ``missing_ok``)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"imagegen-dlq-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        md = c.list_topics(timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            if missing_ok:
                return
            raise MissingTopic(
                f"no topic {topic} on {bootstrap}: run `imagegen topics create` (or check --prefix)"
            )
        parts = sorted(md.topics[topic].partitions)
        ms = int(since.timestamp() * 1000) if since else 0
        found = c.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=10)
        until: dict[int, int] = {}
        start: dict[int, int] = {}
        for tp in found:
            low, high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            begin = high if tp.offset < 0 else max(tp.offset, low)
            if high > begin:
                until[tp.partition], start[tp.partition] = high, begin
        c.assign([TopicPartition(topic, p, start[p]) for p in until])
        deadline = time.monotonic() + 60  # of silence from the broker
        while until and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            deadline = time.monotonic() + 60
            p, offset = msg.partition(), msg.offset()
            if p is None or offset is None or p not in until or offset >= until[p]:
                continue
            yield p, offset, msg.value()
            if offset + 1 >= until[p]:
                del until[p]
        if until:
            raise TimeoutError(f"could not read {topic} partitions {sorted(until)} to their end")
    finally:
        c.close()


def _require_topic(bootstrap: str, topic: str) -> None:
    """Raise MissingTopic unless ``topic`` exists (checked before a redrive publishes anything)."""
    for _ in _read(bootstrap, topic, datetime.now(UTC)):
        pass


def _envelopes(
    bootstrap: str, topic: str, since: datetime | None, event_type: str, *, missing_ok: bool
) -> Iterator[tuple[str, Envelope]]:
    for p, offset, value in _read(bootstrap, topic, since, missing_ok=missing_ok):
        try:
            envelope = Envelope.from_json(value or b"")
        except ValueError:
            continue
        if envelope.type == event_type:
            yield f"{topic}[{p}]@{offset}", envelope


def list_letters(
    bootstrap: str,
    prefix: str = "",
    *,
    since: datetime | None = None,
    topic: str | None = None,
    group: str | None = None,
) -> list[Letter]:
    """Every dead letter under ``prefix`` (oldest first) from ``since`` (else the topic's start),
    of source ``topic`` (with or without the prefix) and consumer ``group`` when given, with its
    redrives. A letter written twice (the same derived id) is listed once."""
    redrives: dict[str, list[DeadLetterRedriven]] = {}
    for _, env in _envelopes(
        bootstrap, prefix + REDRIVE_TOPIC, None, DeadLetterRedriven.event_type, missing_ok=True
    ):
        r = DeadLetterRedriven.model_validate(env.data)
        done = redrives.setdefault(r.letter_id, [])
        if all(x.redrive != r.redrive for x in done):  # the same redrive twice: once
            done.append(r)
    found: dict[str, tuple[str, Envelope, DeadLettered]] = {}
    for where, env in _envelopes(
        bootstrap, prefix + DEADLETTER_TOPIC, since, DeadLettered.event_type, missing_ok=False
    ):
        if env.event_id not in found:
            found[env.event_id] = (where, env, DeadLettered.model_validate(env.data))
    again: dict[str, list[str]] = {}
    for letter_id, (_, _, d) in found.items():
        if d.redrive_of:
            again.setdefault(d.redrive_of, []).append(letter_id)
    letters = [
        Letter(
            id=letter_id,
            at=env.occurred_at,
            where=where,
            letter=d,
            redrives=tuple(sorted(redrives.get(letter_id, ()), key=lambda r: r.redrive)),
            failed_again_as=tuple(again.get(letter_id, ())),
        )
        for letter_id, (where, env, d) in found.items()
        if (topic is None or d.source_topic in (topic, prefix + topic))
        and (group is None or d.consumer_group == group)
    ]
    return sorted(letters, key=lambda x: (x.at, x.id))


def find_letter(letters: Iterable[Letter], letter_id: str) -> Letter:
    """The letter with this id, or the one whose id starts with it (at least 6 characters)."""
    wanted = letter_id.strip().lower()
    pool = list(letters)
    exact = [x for x in pool if x.id == wanted]
    if exact:
        return exact[0]
    if len(wanted) < MIN_ID_PREFIX:
        raise NoSuchLetter(f"no dead letter {letter_id!r} (an id prefix needs {MIN_ID_PREFIX}+)")
    matches = [x for x in pool if x.id.startswith(wanted)]
    if not matches:
        raise NoSuchLetter(f"no dead letter {letter_id!r}: see `imagegen dlq list`")
    if len(matches) > 1:
        raise NoSuchLetter(
            f"{letter_id!r} names {len(matches)} dead letters: give more of the id "
            f"({', '.join(m.id for m in matches[:5])})"
        )
    return matches[0]


@dataclass(frozen=True)
class Redriven:
    """One redrive: the letter, the copy's place on the source topic (-1 on a dry run)."""

    letter: Letter
    redrive: int  # 1 for the letter's first redrive
    partition: int = -1
    offset: int = -1


def redrive_headers(letter: Letter, redrive: int) -> list[tuple[str, bytes]]:
    """The copy's headers: the original's (earlier redrive headers dropped) plus the redrive's."""
    kept = [(k, v) for k, v in letter.headers if not k.startswith(REDRIVE_HEADER_PREFIX)]
    return [
        *kept,
        (REDRIVE_OF, letter.id.encode()),
        (REDRIVE_GROUP, letter.letter.consumer_group.encode()),
        (REDRIVE_ERRORS, json.dumps(letter.errors).encode()),
        (REDRIVE_COUNT, str(letter.letter.redrives + 1).encode()),
    ]


def plan(
    letters: list[Letter], ids: list[str] | None, *, force: bool = False
) -> list[tuple[Letter, int]]:
    """(letter, redrive number) for each letter to redrive; raises on one that may not be.

    ``ids`` None means every letter not redriven yet, except those that are themselves a failed
    redrive (``redrives >= 1``): those are redriven only by id, so a scripted ``--all`` cannot
    loop a record that keeps failing. A named letter already redriven needs ``force``.
    """
    if ids is None:
        chosen = [x for x in letters if not x.redriven and x.letter.redrives == 0]
    else:
        chosen = []
        for letter_id in ids:
            x = find_letter(letters, letter_id)
            if x.redriven and not force:
                last = x.redrives[-1]
                raise AlreadyRedriven(
                    f"dead letter {x.id} was redriven already (to {last.source_topic}"
                    f"[{last.redriven_partition}]@{last.redriven_offset}"
                    + (
                        f", failed again as {', '.join(x.failed_again_as)}"
                        if x.failed_again_as
                        else ""
                    )
                    + "): pass --force to redrive it again"
                )
            if all(x.id != c.id for c in chosen):
                chosen.append(x)
    return [(x, len(x.redrives) + 1) for x in chosen]


async def redrive_many(
    bootstrap: str,
    prefix: str,
    ids: list[str] | None,
    *,
    since: datetime | None = None,
    force: bool = False,
    dry_run: bool = False,
    by: str = "",
    letters: list[Letter] | None = None,
) -> list[Redriven]:
    """Redrive the letters ``ids`` name (None: all not redriven yet, see :func:`plan`).

    Per letter: the copy is published to the source topic first, then the ``DeadLetterRedriven``
    (event id derived from the letter and the redrive number, so a retry after a crash writes the
    same record), then ``imagegen_dlq_redriven_total{topic}`` counts it.
    """
    if letters is None:
        letters = await asyncio.to_thread(list_letters, bootstrap, prefix, since=since)
    todo = plan(letters, ids, force=force)
    if dry_run or not todo:
        return [Redriven(x, n) for x, n in todo]
    await asyncio.to_thread(_require_topic, bootstrap, prefix + REDRIVE_TOPIC)
    publisher = KafkaPublisher(bootstrap, "imagegen-dlq", prefix)
    done = []
    try:
        for x, n in todo:
            d = x.letter
            partition, offset = await publisher.send_raw(
                d.source_topic, x.key, base64.b64decode(d.original_value_b64), redrive_headers(x, n)
            )
            record = DeadLetterRedriven(
                letter_id=x.id,
                source_topic=d.source_topic,
                source_partition=d.source_partition,
                source_offset=d.source_offset,
                consumer_group=d.consumer_group,
                redriven_partition=partition,
                redriven_offset=offset,
                redrive=n,
                forced=n > 1,
                by=by[:200],
            )
            await publisher.publish(
                record,
                key=x.id,
                causation_id=x.id,
                event_id=derived_event_id(x.id, record.event_type, n),
            )
            DLQ_REDRIVEN.labels(d.source_topic).inc()
            done.append(Redriven(x, n, partition, offset))
    finally:
        await publisher.close()
    return done


async def redrive(
    bootstrap: str,
    prefix: str,
    letter_id: str,
    *,
    force: bool = False,
    dry_run: bool = False,
    by: str = "",
) -> Redriven:
    """Redrive one letter (see :func:`redrive_many`); raises NoSuchLetter or AlreadyRedriven."""
    found = await redrive_many(bootstrap, prefix, [letter_id], force=force, dry_run=dry_run, by=by)
    return found[0]


async def require_operator(database_url: str, key: str) -> None:
    """Raise NotOperator unless ``key`` is a live operator key in ``api_keys`` (ADR 0610)."""
    roles = PgKeyRoles.from_url(database_url)
    try:
        role = await roles.role(hash_key(key))
    finally:
        await roles.close()
    if role is None:
        raise NotOperator("unknown or revoked API key")
    if role != OPERATOR:
        raise NotOperator(
            f"this API key has role '{role}', not 'operator': the DLQ tools are for operators "
            "(`imagegen keys create --user U --role operator`)"
        )
