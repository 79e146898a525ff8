"""What the operator page (``/ops``, ADR 0820) reads besides the upstream services.

- :class:`PgOpsReads`: waiting jobs and recent failures from the api's job projection;
- :class:`MemoryOpsReads`: the same over :class:`~.memory.InMemoryJobStore` (tests);
- :class:`KafkaDlq`: the dead-letter topic, read with watermarks by an unsubscribed consumer
  (no group, nothing committed); redrive is delegated to a ``redrive(bootstrap, prefix,
  letter_id)`` function of the DLQ tools when one is installed (:data:`REDRIVE_MODULES`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from sqlalchemy import select

from imagegen_runtime.kafka import DEADLETTER_TOPIC
from imagegen_schemas import Envelope

from ..domain.job import JobView
from .jobstore import PgJobStore, from_json
from .memory import InMemoryJobStore

WAITING = ("moderating", "queued")
# Where the DLQ tools (``imagegen dlq``, ADR 0840) keep ``redrive(bootstrap, prefix, letter_id)``
# and ``list_letters(bootstrap, prefix)``; looked up at call time (ADR 0820).
REDRIVE_MODULES = ("imagegen_runtime.dlq", "imagegen.dlq")


class PgOpsReads:
    """Reads of the job projection for the operator page (two indexed queries)."""

    def __init__(self, store: PgJobStore) -> None:
        self.store = store

    async def waiting(self, limit: int) -> list[JobView]:
        """Jobs not yet scheduled (moderating or queued), oldest first."""
        jobs = self.store.jobs
        async with self.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.state)
                    .where(jobs.c.status.in_(WAITING))
                    .order_by(jobs.c.created_at)
                    .limit(limit)
                )
            ).all()
        return [from_json(r.state) for r in rows]

    async def failures(self, limit: int) -> list[JobView]:
        """Jobs that ended failed (a terminal failure or a rejection), newest first."""
        jobs = self.store.jobs
        async with self.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.state)
                    .where(jobs.c.status == "failed")
                    .order_by(jobs.c.updated_at.desc())
                    .limit(limit)
                )
            ).all()
        return [from_json(r.state) for r in rows]


class MemoryOpsReads:
    """:class:`PgOpsReads` over the in-memory projection."""

    def __init__(self, store: InMemoryJobStore) -> None:
        self.store = store

    def _views(self, statuses: tuple[str, ...]) -> list[JobView]:
        return [from_json(s) for s in self.store.states.values() if s["status"] in statuses]

    async def waiting(self, limit: int) -> list[JobView]:
        views = self._views(WAITING)
        return sorted(views, key=lambda j: j.created_at.isoformat() if j.created_at else "")[:limit]

    async def failures(self, limit: int) -> list[JobView]:
        views = self._views(("failed",))
        views.sort(key=lambda j: j.updated_at.isoformat() if j.updated_at else "", reverse=True)
        return views[:limit]


class RedriveUnavailable(NotImplementedError):
    """No redrive function is installed; the message says where it is looked for."""


def dlq_tools(modules: tuple[str, ...] = REDRIVE_MODULES) -> ModuleType | None:
    """The first of ``modules`` that can be imported (the DLQ tools), else None."""
    for name in modules:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    return None


def find_redrive(modules: tuple[str, ...] = REDRIVE_MODULES) -> Callable[..., Any]:
    """The DLQ tools' ``redrive(bootstrap, prefix, letter_id)``; raises RedriveUnavailable."""
    problems = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            problems.append(f"no module {name}")
            continue
        found = getattr(module, "redrive", None)
        if callable(found):
            return found  # type: ignore[no-any-return]
        problems.append(f"{name} has no redrive()")
    raise RedriveUnavailable(
        "redrive is not available in this build: the DLQ tools' redrive(bootstrap, prefix,"
        f" letter_id) was not found ({'; '.join(problems)}); use `imagegen dlq redrive`"
    )


class KafkaDlq:
    """The dead-letter topic ``{prefix}imagegen.deadletter`` for the operator page.

    ``list``: the DLQ tools' ``list_letters`` when installed (each letter's ``summary()``, with
    its redrives), else this module's own minimal read: the last ``limit`` records of each
    partition, from the low/high watermarks, by a consumer that joins no group and commits
    nothing. Either answer is reused for ``cache_s`` seconds, since every open page polls it.
    ``redrive``: the DLQ tools' ``redrive(bootstrap, prefix, letter_id)``; its semantics (what
    is published, refusing a second redrive) are theirs.
    """

    def __init__(
        self,
        bootstrap: str,
        prefix: str = "",
        *,
        cache_s: float = 5.0,
        timeout_s: float = 5.0,
        redrive_fn: Callable[[], Callable[..., Any]] = find_redrive,
        tools: Callable[[], ModuleType | None] = dlq_tools,
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.topic = prefix + DEADLETTER_TOPIC
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.redrive_fn = redrive_fn
        self.tools = tools
        # (expires, limit, answer)
        self._cached: tuple[float, int, dict[str, Any]] | None = None

    async def list(self, limit: int) -> dict[str, Any]:
        """``{"total": letters held, "letters": the newest limit, newest first}``."""
        now = time.monotonic()
        if self._cached and self._cached[0] > now and self._cached[1] >= limit:
            cached = self._cached[2]
            return {"total": cached["total"], "letters": cached["letters"][:limit]}
        tools = self.tools()
        if tools is not None and hasattr(tools, "list_letters"):
            found = await asyncio.to_thread(self._tools_list, tools, limit)
        else:
            found = await asyncio.to_thread(self._read, limit)
        self._cached = (time.monotonic() + self.cache_s, limit, found)
        return found

    def _tools_list(self, tools: ModuleType, limit: int) -> dict[str, Any]:
        letters = tools.list_letters(self.bootstrap, self.prefix)  # oldest first
        newest = [x.summary() for x in reversed(letters[-limit:])] if limit else []
        return {"total": len(letters), "letters": newest}

    async def redrive(self, letter_id: str, by: str = "") -> dict[str, Any]:
        """Hand the letter to the DLQ tools' redrive. Raises RedriveUnavailable (a
        NotImplementedError) when they are not installed, LookupError for an unknown letter,
        ValueError for one they refuse (redriven already)."""
        fn = self.redrive_fn()
        kwargs = {"by": by} if by and "by" in inspect.signature(fn).parameters else {}
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(self.bootstrap, self.prefix, letter_id, **kwargs)
            else:
                result = await asyncio.to_thread(
                    fn, self.bootstrap, self.prefix, letter_id, **kwargs
                )
        except Exception as exc:
            if type(exc).__name__ == "NoSuchLetter":
                raise LookupError(str(exc)) from exc
            raise
        self._cached = None  # the letter's state changed
        return describe(letter_id, result)

    def _read(self, limit: int) -> dict[str, Any]:
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"imagegen-api-ops-{uuid.uuid4().hex[:8]}",  # never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "allow.auto.create.topics": False,
            }
        )
        try:
            md = c.list_topics(timeout=self.timeout_s)
            meta = md.topics.get(self.topic)
            if meta is None or meta.error is not None:
                raise LookupError(f"no topic {self.topic} on {self.bootstrap}")
            total, ends, assign = 0, {}, []
            for p in sorted(meta.partitions):
                low, high = c.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=self.timeout_s
                )
                total += max(0, high - low)
                start = max(low, high - limit)
                if high > start:
                    ends[p] = high
                    assign.append(TopicPartition(self.topic, p, start))
            letters: list[dict[str, Any]] = []
            if assign:
                c.assign(assign)
            deadline = time.monotonic() + self.timeout_s
            while ends and time.monotonic() < deadline:
                msg = c.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends.pop(msg.partition(), None)
                    continue
                p, offset = msg.partition(), msg.offset()
                if p is None or offset is None:
                    continue
                letter = _letter(msg.value(), p, offset)
                if letter is not None:
                    letters.append(letter)
                if offset + 1 >= ends.get(p, 0):
                    ends.pop(p, None)
        finally:
            c.close()
        letters.sort(key=lambda x: x["at"], reverse=True)
        return {"total": total, "letters": letters[:limit]}


def _letter(value: bytes | None, partition: int, offset: int) -> dict[str, Any] | None:
    """One dead-letter record as the page shows it; None when it is not an envelope."""
    try:
        env = Envelope.from_json(value or b"")
    except ValueError:
        return None
    d = env.data
    return {  # the fields of the DLQ tools' Letter.summary() this read can know
        "id": env.event_id,
        "at": env.occurred_at.isoformat(),
        "source_topic": d.get("source_topic"),
        "source_partition": d.get("source_partition"),
        "source_offset": d.get("source_offset"),
        "consumer_group": d.get("consumer_group"),
        "job_id": None,
        "error": (str(d.get("error", "")).strip().splitlines() or [""])[0][:200],
        "redriven": None,  # unknown without the redrive records
        "where": f"{DEADLETTER_TOPIC}[{partition}]@{offset}",
    }


def describe(letter_id: str, result: Any) -> dict[str, Any]:
    """The redrive's answer as JSON: a dict as is; the tools' ``Redriven`` by its fields."""
    if isinstance(result, dict):
        return result
    letter = getattr(result, "letter", None)
    source = getattr(getattr(letter, "letter", None), "source_topic", None)
    return {
        "id": getattr(letter, "id", letter_id),
        "redrive": getattr(result, "redrive", None),
        "source_topic": source,
        "partition": getattr(result, "partition", None),
        "offset": getattr(result, "offset", None),
    }
