"""Delivery's webhook state: ``WebhookStore`` is the port; PostgreSQL the real adapter, with an
in-memory fake that passes the same contract tests (docs/adr/0403, 0405).

Three tables, owned by delivery:
- ``delivery_webhook_jobs``: per job, what the request said (user, URL) and the first terminal
  outcome, joined in either order; ``scheduled`` once the first attempt is on the retry topic.
- ``delivery_webhook_messages``: per message, the latest (round, attempt) seen on the retry topic,
  its due time and status (pending | delivered | dead) with the last status and error. A record
  older than the row is a duplicate and is dropped; pending rows are reloaded at start.
- ``delivery_webhook_secrets``: per user, ``whsec_`` secrets; a rotation gives the old ones an
  expiry, so both sign until then.
"""

from __future__ import annotations

import asyncio
import base64
import secrets as random_secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Row, TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen_schemas.webhooks import WebhookScheduled

from ..domain.webhook import Outcome


@dataclass(frozen=True)
class Ready:
    """A job whose request and outcome are both known: its webhook can be scheduled."""

    job_id: str
    user_id: str
    url: str | None  # None: the client gave no webhook
    outcome: Outcome


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(random_secrets.token_bytes(24)).decode()


class WebhookStore(Protocol):
    async def create(self) -> None: ...
    async def note_request(self, job_id: str, user_id: str, url: str | None) -> Ready | None:
        """Record the request; the job if its outcome is known and not yet scheduled."""
        ...

    async def note_outcome(self, job_id: str, outcome: Outcome) -> Ready | None:
        """Record the outcome (the first one wins); the job if the request is known too."""
        ...

    async def mark_scheduled(self, job_id: str) -> None: ...
    async def upsert_message(self, msg: WebhookScheduled) -> bool:
        """Keep ``msg`` if it is newer (round, attempt) than what is stored; True if kept."""
        ...

    async def record_result(
        self, msg: WebhookScheduled, status: str, last_status: int | None, last_error: str
    ) -> None:
        """The outcome of attempt ``msg.attempt`` (ignored if a newer one was stored)."""
        ...

    async def pending(self) -> list[WebhookScheduled]: ...
    async def status_of(self, message_id: str) -> tuple[str, int, int, str] | None:
        """(status, round, attempt, last_error) of a message, or None."""
        ...

    async def secrets(self, user_id: str, now: datetime) -> list[str]:
        """The user's active secrets, newest first; creates one when there is none."""
        ...

    async def rotate(self, user_id: str, now: datetime, overlap: timedelta) -> str:
        """A new secret; the current ones keep signing until ``now + overlap``."""
        ...


@dataclass
class _Job:
    user_id: str | None = None
    url: str | None = None
    requested: bool = False
    outcome: Outcome | None = None
    scheduled: bool = False


@dataclass
class _Secret:
    secret: str
    created_at: datetime
    expires_at: datetime | None = None


@dataclass
class InMemoryWebhookStore:
    """Fake: the same rules as the PostgreSQL store, in dicts."""

    jobs: dict[str, _Job] = field(default_factory=dict)
    messages: dict[str, tuple[WebhookScheduled, str, str]] = field(default_factory=dict)
    user_secrets: dict[str, list[_Secret]] = field(default_factory=dict)

    async def create(self) -> None:
        pass

    def _ready(self, job_id: str) -> Ready | None:
        j = self.jobs[job_id]
        if not j.requested or j.outcome is None or j.scheduled or j.user_id is None:
            return None
        return Ready(job_id, j.user_id, j.url, j.outcome)

    async def note_request(self, job_id: str, user_id: str, url: str | None) -> Ready | None:
        j = self.jobs.setdefault(job_id, _Job())
        j.user_id, j.url, j.requested = user_id, url, True
        return self._ready(job_id)

    async def note_outcome(self, job_id: str, outcome: Outcome) -> Ready | None:
        j = self.jobs.setdefault(job_id, _Job())
        j.outcome = j.outcome or outcome
        return self._ready(job_id)

    async def mark_scheduled(self, job_id: str) -> None:
        self.jobs.setdefault(job_id, _Job()).scheduled = True

    async def upsert_message(self, msg: WebhookScheduled) -> bool:
        old = self.messages.get(msg.message_id)
        if old is not None and (msg.round, msg.attempt) <= (old[0].round, old[0].attempt):
            return False
        self.messages[msg.message_id] = (msg, "pending", msg.last_error)
        return True

    async def record_result(
        self, msg: WebhookScheduled, status: str, last_status: int | None, last_error: str
    ) -> None:
        old = self.messages.get(msg.message_id)
        if old is None or (old[0].round, old[0].attempt) != (msg.round, msg.attempt):
            return
        kept = old[0].model_copy(update={"last_status": last_status, "last_error": last_error})
        self.messages[msg.message_id] = (kept, status, last_error)

    async def pending(self) -> list[WebhookScheduled]:
        return [m for m, s, _ in self.messages.values() if s == "pending"]

    async def status_of(self, message_id: str) -> tuple[str, int, int, str] | None:
        found = self.messages.get(message_id)
        if found is None:
            return None
        m, s, err = found
        return s, m.round, m.attempt, err

    async def secrets(self, user_id: str, now: datetime) -> list[str]:
        have = [
            s
            for s in self.user_secrets.get(user_id, [])
            if s.expires_at is None or s.expires_at > now
        ]
        if not have:
            have = [_Secret(new_secret(), now)]
            self.user_secrets.setdefault(user_id, []).extend(have)
        return [s.secret for s in sorted(have, key=lambda s: s.created_at, reverse=True)]

    async def rotate(self, user_id: str, now: datetime, overlap: timedelta) -> str:
        old = self.user_secrets.setdefault(user_id, [])
        self.user_secrets[user_id] = [
            replace(s, expires_at=now + overlap) if s.expires_at is None else s for s in old
        ]
        fresh = _Secret(new_secret(), now)
        self.user_secrets[user_id].append(fresh)
        return fresh.secret


_DDL = (
    """create table if not exists delivery_webhook_jobs (
        job_id text primary key, user_id text, webhook_url text,
        requested boolean not null default false,
        message_id text, webhook_type text, body text,
        scheduled boolean not null default false)""",
    """create table if not exists delivery_webhook_messages (
        message_id text primary key, job_id text not null, user_id text not null,
        url text not null, webhook_type text not null, body text not null,
        round int not null, attempt int not null, due_at timestamptz not null,
        status text not null, last_status int, last_error text not null default '',
        updated_at timestamptz not null default now())""",
    """create table if not exists delivery_webhook_secrets (
        id bigserial primary key, user_id text not null, secret text not null,
        created_at timestamptz not null, expires_at timestamptz)""",
    "create index if not exists delivery_webhook_secrets_user on delivery_webhook_secrets(user_id)",
)

_JOB_COLUMNS = "job_id, user_id, webhook_url, requested, message_id, webhook_type, body, scheduled"


class PgWebhookStore:
    """The tables above, through one SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine, prefix: str = "") -> None:
        self.engine = engine
        self.prefix = prefix  # table name prefix: tests isolate themselves with one
        self._created = False
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        """Create the tables before the first use (once per process)."""
        if not self._created:
            async with self._lock:
                if not self._created:
                    await self.create()
                    self._created = True

    def _sql(self, sql: str) -> TextClause:
        return text(sql.replace("delivery_webhook_", f"{self.prefix}delivery_webhook_"))

    async def drop(self) -> None:
        """Drop the tables (tests)."""
        async with self.engine.begin() as conn:
            for name in ("jobs", "messages", "secrets"):
                await conn.execute(self._sql(f"drop table if exists delivery_webhook_{name}"))
        self._created = False

    async def create(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(self._sql("select pg_advisory_xact_lock(4030403)"))  # one creator
            for ddl in _DDL:
                await conn.execute(self._sql(ddl))

    @staticmethod
    def _ready(row: Row[Any]) -> Ready | None:
        r = row._mapping
        if not r["requested"] or r["message_id"] is None or r["scheduled"] or r["user_id"] is None:
            return None
        outcome = Outcome(r["message_id"], r["webhook_type"], r["body"])
        return Ready(r["job_id"], r["user_id"], r["webhook_url"], outcome)

    async def note_request(self, job_id: str, user_id: str, url: str | None) -> Ready | None:
        sql = self._sql(
            "insert into delivery_webhook_jobs (job_id, user_id, webhook_url, requested) "
            "values (:j, :u, :url, true) on conflict (job_id) do update set "
            "user_id = excluded.user_id, webhook_url = excluded.webhook_url, requested = true "
            f"returning {_JOB_COLUMNS}"
        )
        await self._ensure()
        async with self.engine.begin() as conn:
            row = (await conn.execute(sql, {"j": job_id, "u": user_id, "url": url})).one()
        return self._ready(row)

    async def note_outcome(self, job_id: str, outcome: Outcome) -> Ready | None:
        sql = self._sql(
            "insert into delivery_webhook_jobs (job_id, message_id, webhook_type, body) "
            "values (:j, :m, :t, :b) on conflict (job_id) do update set "
            "message_id = coalesce(delivery_webhook_jobs.message_id, excluded.message_id), "
            "webhook_type = coalesce(delivery_webhook_jobs.webhook_type, excluded.webhook_type), "
            "body = coalesce(delivery_webhook_jobs.body, excluded.body) "
            f"returning {_JOB_COLUMNS}"
        )
        args = {"j": job_id, "m": outcome.message_id, "t": outcome.webhook_type, "b": outcome.body}
        await self._ensure()
        async with self.engine.begin() as conn:
            row = (await conn.execute(sql, args)).one()
        return self._ready(row)

    async def mark_scheduled(self, job_id: str) -> None:
        await self._ensure()
        async with self.engine.begin() as conn:
            await conn.execute(
                self._sql("update delivery_webhook_jobs set scheduled = true where job_id = :j"),
                {"j": job_id},
            )

    async def upsert_message(self, msg: WebhookScheduled) -> bool:
        sql = self._sql(
            "insert into delivery_webhook_messages as m (message_id, job_id, user_id, url, "
            "webhook_type, body, round, attempt, due_at, status, last_status, last_error) "
            "values (:id, :job, :user, :url, :type, :body, :round, :attempt, :due, 'pending', "
            ":ls, :le) on conflict (message_id) do update set url = excluded.url, "
            "round = excluded.round, attempt = excluded.attempt, due_at = excluded.due_at, "
            "status = 'pending', last_status = excluded.last_status, "
            "last_error = excluded.last_error, updated_at = now() "
            "where (excluded.round, excluded.attempt) > (m.round, m.attempt) "
            "returning message_id"
        )
        args = {
            "id": msg.message_id,
            "job": msg.job_id,
            "user": msg.user_id,
            "url": msg.url,
            "type": msg.webhook_type,
            "body": msg.body,
            "round": msg.round,
            "attempt": msg.attempt,
            "due": msg.due_at,
            "ls": msg.last_status,
            "le": msg.last_error,
        }
        await self._ensure()
        async with self.engine.begin() as conn:
            return (await conn.execute(sql, args)).first() is not None

    async def record_result(
        self, msg: WebhookScheduled, status: str, last_status: int | None, last_error: str
    ) -> None:
        sql = self._sql(
            "update delivery_webhook_messages set status = :s, last_status = :ls, "
            "last_error = :le, updated_at = now() "
            "where message_id = :id and round = :r and attempt = :a"
        )
        args = {
            "s": status,
            "ls": last_status,
            "le": last_error,
            "id": msg.message_id,
            "r": msg.round,
            "a": msg.attempt,
        }
        await self._ensure()
        async with self.engine.begin() as conn:
            await conn.execute(sql, args)

    async def pending(self) -> list[WebhookScheduled]:
        sql = self._sql(
            "select message_id, job_id, user_id, url, webhook_type, body, round, attempt, "
            "due_at, last_status, last_error from delivery_webhook_messages "
            "where status = 'pending'"
        )
        await self._ensure()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sql)).mappings().all()
        return [WebhookScheduled(**dict(r)) for r in rows]

    async def status_of(self, message_id: str) -> tuple[str, int, int, str] | None:
        sql = self._sql(
            "select status, round, attempt, last_error from delivery_webhook_messages "
            "where message_id = :id"
        )
        await self._ensure()
        async with self.engine.connect() as conn:
            row = (await conn.execute(sql, {"id": message_id})).first()
        return None if row is None else (row[0], row[1], row[2], row[3])

    async def secrets(self, user_id: str, now: datetime) -> list[str]:
        select_active = self._sql(
            "select secret from delivery_webhook_secrets where user_id = :u and "
            "(expires_at is null or expires_at > :now) order by created_at desc, id desc"
        )
        await self._ensure()
        async with self.engine.begin() as conn:
            await conn.execute(
                self._sql("select pg_advisory_xact_lock(hashtext(:u))"), {"u": user_id}
            )
            found = [r[0] for r in await conn.execute(select_active, {"u": user_id, "now": now})]
            if not found:
                found = [new_secret()]
                await conn.execute(
                    self._sql(
                        "insert into delivery_webhook_secrets (user_id, secret, created_at) "
                        "values (:u, :s, :now)"
                    ),
                    {"u": user_id, "s": found[0], "now": now},
                )
        return found

    async def rotate(self, user_id: str, now: datetime, overlap: timedelta) -> str:
        fresh = new_secret()
        await self._ensure()
        async with self.engine.begin() as conn:
            await conn.execute(
                self._sql("select pg_advisory_xact_lock(hashtext(:u))"), {"u": user_id}
            )
            await conn.execute(
                self._sql(
                    "update delivery_webhook_secrets set expires_at = :until "
                    "where user_id = :u and expires_at is null"
                ),
                {"u": user_id, "until": now + overlap},
            )
            await conn.execute(
                self._sql(
                    "insert into delivery_webhook_secrets (user_id, secret, created_at) "
                    "values (:u, :s, :now)"
                ),
                {"u": user_id, "s": fresh, "now": now},
            )
        return fresh


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
