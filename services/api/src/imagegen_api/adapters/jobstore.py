"""The job projection in PostgreSQL: apply one event atomically, read jobs and timelines."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import MetaData, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen_schemas import Envelope, Payload

from ..domain.job import Attempt, JobView, evolve
from .tables import job_tables

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """``value`` with every string PostgreSQL can hold: NUL (which no text or JSONB value may
    contain) and lone surrogates (not UTF-8) become U+FFFD.

    The API refuses both at the edge (ADR 0601); this keeps an event already in the log from
    blocking the projection forever (a database error is retried, never dead-lettered).
    """
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def to_json(job: JobView) -> dict[str, Any]:
    doc = dataclasses.asdict(job)
    for k in ("created_at", "updated_at"):
        doc[k] = doc[k].isoformat() if doc[k] else None
    state: dict[str, Any] = storable(json.loads(json.dumps(doc, default=str)))
    return state


def from_json(doc: dict[str, Any]) -> JobView:
    doc = dict(doc)
    for k in ("created_at", "updated_at"):
        doc[k] = datetime.fromisoformat(doc[k]) if doc.get(k) else None
    doc["categories"] = tuple(doc.get("categories", ()))
    doc["images"] = tuple(doc.get("images", ()))
    doc["failed_attempts"] = tuple(doc.get("failed_attempts", ()))
    doc["attempts"] = {
        t: Attempt(**{**a, "categories": tuple(a.get("categories", ()))})
        for t, a in doc.get("attempts", {}).items()
    }
    return JobView(**doc)


# Bump when the fold (domain.job) or the tables change: the api then drops the projection and
# rebuilds it from offset 0 under a new consumer group (``projector_group``).
PROJECTION_VERSION = 2


def projector_group(topic_prefix: str = "") -> str:
    return f"{topic_prefix}imagegen-api-projector-v{PROJECTION_VERSION}"


class PgJobStore:
    """One projection instance; ``prefix`` selects the live tables ("") or a rebuild set."""

    def __init__(self, engine: AsyncEngine, prefix: str = "") -> None:
        self.engine = engine
        self.metadata = MetaData()
        self.jobs, self.events, self.processed = job_tables(self.metadata, prefix)

    async def create(self) -> None:
        """Create the tables; drop an older version of the projection first (it is rebuilt).
        The API and its projector process may do this at once: a transaction-scoped advisory
        lock makes the second wait for the first and then find the tables made."""
        async with self.engine.begin() as conn:
            await conn.execute(text("select pg_advisory_xact_lock(hashtext('imagegen-jobs-ddl'))"))
            await conn.execute(
                text(
                    "create table if not exists projection_versions "
                    "(name text primary key, version int not null)"
                )
            )
            name = self.jobs.name
            found = (
                await conn.execute(
                    text("select version from projection_versions where name = :n"), {"n": name}
                )
            ).scalar()
            if found != PROJECTION_VERSION:  # older, or from before versions were kept
                await conn.run_sync(self.metadata.drop_all)
            await conn.run_sync(self.metadata.create_all)
            await conn.execute(
                text(
                    "insert into projection_versions values (:n, :v) on conflict (name) "
                    "do update set version = excluded.version"
                ),
                {"n": name, "v": PROJECTION_VERSION},
            )

    async def drop(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.drop_all)
            await conn.execute(
                text("delete from projection_versions where name = :n"), {"n": self.jobs.name}
            )

    async def apply(
        self, env: Envelope, payload: Payload, topic: str, partition: int, offset: int
    ) -> bool:
        """Apply one event; False when it was already applied (redelivery)."""
        job_id = getattr(payload, "job_id", None)
        if job_id is None:
            return False
        job_id, event_id = storable(job_id), storable(env.event_id)
        async with self.engine.begin() as conn:
            claimed = await conn.execute(
                pg_insert(self.processed)
                .values(event_id=event_id, topic=topic, partition=partition, offset=offset)
                .on_conflict_do_nothing()
                .returning(self.processed.c.event_id)
            )
            if claimed.first() is None:
                return False
            row = (
                await conn.execute(
                    select(self.jobs.c.state).where(self.jobs.c.job_id == job_id).with_for_update()
                )
            ).first()
            before = from_json(row.state) if row else JobView(job_id=job_id)
            after = evolve(before, env, payload)
            state = to_json(after)
            values = dict(
                user_id=state["user_id"],
                tier=state["tier"],
                status=state["status"],
                state=state,
                created_at=after.created_at,
                updated_at=after.updated_at,
            )
            if row is None:
                await conn.execute(insert(self.jobs).values(job_id=job_id, **values))
            else:
                await conn.execute(
                    update(self.jobs).where(self.jobs.c.job_id == job_id).values(**values)
                )
            await conn.execute(
                insert(self.events).values(
                    job_id=job_id,
                    event_id=event_id,
                    type=storable(env.type),
                    occurred_at=env.occurred_at,
                    data=storable(env.data),
                )
            )
        return True

    async def get(self, job_id: str) -> JobView | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(self.jobs.c.state).where(self.jobs.c.job_id == job_id))
            ).first()
        return from_json(row.state) if row else None

    async def timeline(self, job_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        self.events.c.seq,
                        self.events.c.type,
                        self.events.c.occurred_at,
                        self.events.c.data,
                        self.events.c.event_id,
                    )
                    .where(self.events.c.job_id == job_id, self.events.c.seq > after_seq)
                    .order_by(self.events.c.seq)
                )
            ).all()
        return [dict(r._mapping) for r in rows]

    async def queue_position(self, job: JobView) -> int:
        """Jobs of the same tier waiting ahead of ``job`` (created earlier, not yet scheduled)."""
        if job.created_at is None:
            return 0
        async with self.engine.connect() as conn:
            n = (
                await conn.execute(
                    select(func.count())
                    .select_from(self.jobs)
                    .where(
                        self.jobs.c.tier == job.tier,
                        self.jobs.c.status.in_(("moderating", "queued")),
                        self.jobs.c.created_at < job.created_at,
                    )
                )
            ).scalar()
        return int(n or 0)

    async def all_states(self) -> dict[str, dict[str, Any]]:
        """Every job's state (for replay verification)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(self.jobs.c.job_id, self.jobs.c.state))).all()
        return {r.job_id: r.state for r in rows}
