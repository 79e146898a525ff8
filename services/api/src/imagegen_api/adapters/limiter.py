"""Limits and quotas kept in PostgreSQL, shared by every API instance (ADR 0640).

Two tables: ``rate_limits`` (one row per user: the request bucket, and the images requested on
``day``) and ``admitted_jobs`` (one row per accepted job until the job projection shows it
terminal). A user's active jobs are their ``admitted_jobs`` rows, less those the projection shows
ended, less those admitted more than ``stale_after`` ago that never reached the projection (a
process died between admission and publishing; such a job does not exist).

Each decision runs in a transaction that locks the users' ``rate_limits`` rows, so concurrent
requests on several instances never both take the last token or the last slot. Requests are
group-committed (``imagegen_runtime.batching``): under load one transaction decides for every
request that arrived during the previous one.

:class:`InMemoryLimiter` is the fake; both pass ``tests/test_api_limits_contract.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen_runtime.batching import GroupCommit
from imagegen_runtime.db import retry_if_disconnected

from ..domain.job import TERMINAL
from ..domain.limits import (
    Bucket,
    JobRequest,
    Limits,
    Refusal,
    Take,
    admit,
    lease_size,
    take,
)

STALE_AFTER = timedelta(minutes=5)  # longer than the publisher's retries (120 s)
# Limiter state is not worth an fsync per request: a database crash may forget the last few
# hundred milliseconds of buckets and admissions (a user gets those tokens again; an admitted
# job's row is lost, and the job stops counting). A process crash loses nothing. Bootstrap gives
# the limiter an engine whose sessions commit so (``make_engine(async_commit=True)``).

metadata = MetaData()
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("tokens", Float),  # NULL: a new user (a full bucket)
    Column("refilled_at", DateTime(timezone=True)),
    Column("day", Date),  # the UTC day images_today counts
    Column("images_today", Integer, nullable=False, default=0),
)
admitted_jobs = Table(
    "admitted_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("user_id", String(128), nullable=False, index=True),
    Column("images", Integer, nullable=False),
    Column("admitted_at", DateTime(timezone=True), nullable=False),
)


LEASE_S = 1.0  # how long an instance may spend a lease's tokens; unspent ones are dropped


@dataclass
class _Lease:
    """Tokens this instance took from a user's bucket and has not spent yet."""

    left: int
    until: float  # time.monotonic() deadline
    limits: Limits
    shown: Take  # the bucket as the grant left it (for the headers)


@dataclass(frozen=True)
class _TakeItem:
    user_id: str
    limits: Limits
    now: datetime


@dataclass(frozen=True)
class _AdmitItem:
    req: JobRequest
    now: datetime


_LOCK_USERS = text(
    "insert into rate_limits (user_id, tokens, refilled_at, day, images_today)"
    " select u, null, null, null, 0 from unnest(:users) as u"
    " on conflict (user_id) do update set user_id = excluded.user_id"
    " returning user_id, tokens, refilled_at, day, images_today"
).bindparams(bindparam("users", type_=ARRAY(String)))
_SAVE_BUCKETS = text(
    "update rate_limits r set tokens = v.tokens, refilled_at = v.at"
    " from unnest(:users, :tokens, :ats) as v(user_id, tokens, at) where r.user_id = v.user_id"
).bindparams(
    bindparam("users", type_=ARRAY(String)),
    bindparam("tokens", type_=ARRAY(Float)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
)
_ADMITTED = text("select job_id from admitted_jobs where job_id = any(:jobs)").bindparams(
    bindparam("jobs", type_=ARRAY(String))
)
_ADMIT = text(  # the admissions and the users' image counts, in one statement
    "with admitted as (insert into admitted_jobs (job_id, user_id, images, admitted_at)"
    " select * from unnest(:jobs, :users, :images, :ats) on conflict (job_id) do nothing)"
    " update rate_limits r set day = v.day, images_today = v.images"
    " from unnest(:changed, :days, :counts) as v(user_id, day, images)"
    " where r.user_id = v.user_id"
).bindparams(
    bindparam("jobs", type_=ARRAY(String)),
    bindparam("users", type_=ARRAY(String)),
    bindparam("images", type_=ARRAY(Integer)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
    bindparam("changed", type_=ARRAY(String)),
    bindparam("days", type_=ARRAY(Date)),
    bindparam("counts", type_=ARRAY(Integer)),
)


def _prune_and_count(jobs_table: str) -> Any:
    """One statement: drop the users' admissions whose job ended (or never showed up in the
    projection within ``STALE_AFTER``), and count what is left per user. The count reads the
    snapshot from before the delete, so it leaves the deleted rows out itself."""
    ended = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
    return text(
        f"with pruned as (delete from admitted_jobs a where a.user_id = any(:users) and ("
        f" exists (select 1 from {jobs_table} j where j.job_id = a.job_id"
        f" and j.status in ({ended}))"
        f" or (a.admitted_at < :stale and not exists"
        f" (select 1 from {jobs_table} j where j.job_id = a.job_id)))"
        f" returning a.job_id)"
        f" select a.user_id, count(*) as n from admitted_jobs a where a.user_id = any(:users)"
        f" and a.job_id not in (select job_id from pruned) group by a.user_id"
    ).bindparams(bindparam("users", type_=ARRAY(String)))


class PgLimiter:
    def __init__(self, engine: AsyncEngine, jobs_table: str = "jobs") -> None:
        self.engine = engine
        self._prune_and_count = _prune_and_count(jobs_table)
        self._takes: GroupCommit[_TakeItem, Take] = GroupCommit(self._take_batch)
        self._admits: GroupCommit[_AdmitItem, Refusal | None] = GroupCommit(self._admit_batch)
        self._leases: dict[str, _Lease] = {}

    async def create_tables(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def take(self, user_id: str, limits: Limits, now: datetime) -> Take:
        """One request of ``user_id`` against their request bucket: from this instance's lease
        when it has one (no database), else from the shared bucket (taking a new lease)."""
        spent = self._spend(user_id, limits)
        if spent is not None:
            return spent
        return await self._takes.submit(_TakeItem(user_id, limits, now))

    def _spend(self, user_id: str, limits: Limits) -> Take | None:
        lease = self._leases.get(user_id)
        if lease is None or lease.left < 1 or lease.limits != limits:
            return None
        if lease.until < time.monotonic():
            del self._leases[user_id]
            return None
        lease.left -= 1
        return replace(lease.shown, remaining=lease.shown.remaining + lease.left, granted=1)

    async def admit(self, req: JobRequest, now: datetime) -> Refusal | None:
        """Room for one more active job and ``req.images`` more images today, else the refusal.
        Admitted, the job counts until the projection shows it ended (or :meth:`release`)."""
        return await self._admits.submit(_AdmitItem(req, now))

    async def release(self, user_id: str, job_id: str) -> None:
        """The admitted job was never published: give back its slot and its images."""

        async def give_back(_: bool) -> None:  # a second run finds the row gone: a no-op
            async with self.engine.begin() as conn:
                row = (
                    await conn.execute(
                        text(
                            "delete from admitted_jobs where job_id = :job and user_id = :user"
                            " returning images, admitted_at"
                        ),
                        {"job": job_id, "user": user_id},
                    )
                ).first()
                if row is not None:
                    await conn.execute(
                        text(
                            "update rate_limits set images_today = greatest(0, images_today - :n)"
                            " where user_id = :user and day = :day"
                        ),
                        {"n": row.images, "user": user_id, "day": row.admitted_at.date()},
                    )

        await retry_if_disconnected(give_back)

    async def _lock(self, conn: Any, users: list[str]) -> dict[str, Any]:
        rows = await conn.execute(_LOCK_USERS, {"users": users})
        return {r.user_id: r for r in rows}

    async def _take_batch(self, items: list[_TakeItem]) -> Sequence[Take]:
        # A second run after a commit lost in flight may take these requests' tokens twice.
        return await retry_if_disconnected(lambda _: self._take_once(items))

    async def _take_once(self, items: list[_TakeItem]) -> Sequence[Take]:
        users = sorted({i.user_id for i in items})  # one lock order: no deadlock between batches
        async with self.engine.begin() as conn:
            rows = await self._lock(conn, users)
            buckets: dict[str, Bucket | None] = {
                u: None if r.tokens is None else Bucket(r.tokens, r.refilled_at)
                for u, r in rows.items()
            }
            out = []
            for item in items:
                spent = self._spend(item.user_id, item.limits)  # a lease taken in this batch
                if spent is not None:
                    out.append(spent)
                    continue
                want = lease_size(item.limits)
                result = take(buckets[item.user_id], item.limits, item.now, want)
                buckets[item.user_id] = result.bucket
                if result.granted > 1:
                    self._leases[item.user_id] = _Lease(
                        result.granted - 1, time.monotonic() + LEASE_S, item.limits, result
                    )
                out.append(replace(result, remaining=result.remaining + result.granted - 1))
            saved = [(u, b) for u, b in buckets.items() if b is not None]
            await conn.execute(
                _SAVE_BUCKETS,
                {
                    "users": [u for u, _ in saved],
                    "tokens": [b.tokens for _, b in saved],
                    "ats": [b.at for _, b in saved],
                },
            )
        return out

    async def _admit_batch(self, items: list[_AdmitItem]) -> Sequence[Refusal | None]:
        return await retry_if_disconnected(lambda again: self._admit_once(items, again))

    async def _admit_once(self, items: list[_AdmitItem], again: bool) -> Sequence[Refusal | None]:
        users = sorted({i.req.user_id for i in items})
        now = max(i.now for i in items)
        async with self.engine.begin() as conn:
            rows = await self._lock(conn, users)
            counted = await conn.execute(
                self._prune_and_count, {"users": users, "stale": now - STALE_AFTER}
            )
            active = {r.user_id: r.n for r in counted}
            images: dict[str, tuple[date | None, int]] = {
                u: (r.day, r.images_today) for u, r in rows.items()
            }
            landed: set[str] = set()  # admitted by a first run whose commit landed after all
            if again:
                jobs = [i.req.job_id for i in items]
                landed = {r.job_id for r in await conn.execute(_ADMITTED, {"jobs": jobs})}
            out: list[Refusal | None] = []
            admitted: list[_AdmitItem] = []
            for item in items:
                if item.req.job_id in landed:
                    out.append(None)
                    continue
                user = item.req.user_id
                day, count = images[user]
                refusal = admit(item.req, active.get(user, 0), count, day, item.now)
                out.append(refusal)
                if refusal is None:
                    today = item.now.date()
                    images[user] = (today, (count if day == today else 0) + item.req.images)
                    active[user] = active.get(user, 0) + 1
                    admitted.append(item)
            if admitted:
                changed = sorted({i.req.user_id for i in admitted})
                await conn.execute(
                    _ADMIT,
                    {
                        "jobs": [i.req.job_id for i in admitted],
                        "users": [i.req.user_id for i in admitted],
                        "images": [i.req.images for i in admitted],
                        "ats": [i.now for i in admitted],
                        "changed": changed,
                        "days": [images[u][0] for u in changed],
                        "counts": [images[u][1] for u in changed],
                    },
                )
        return out


class InMemoryLimiter:
    """The fake: the same decisions in one process. ``status(job_id)`` answers the projection's
    status of a job (None: not projected), as the jobs table does for :class:`PgLimiter`."""

    def __init__(self, status: Callable[[str], str | None] = lambda _: None) -> None:
        self.status = status
        self.buckets: dict[str, Bucket] = {}
        self.images: dict[str, tuple[date, int]] = {}
        self.admitted: dict[str, tuple[str, int, datetime]] = {}  # job -> user, images, at
        self._lock = asyncio.Lock()

    async def create_tables(self) -> None:
        return None

    async def take(self, user_id: str, limits: Limits, now: datetime) -> Take:
        async with self._lock:
            result = take(self.buckets.get(user_id), limits, now)
            self.buckets[user_id] = result.bucket
            return result

    async def admit(self, req: JobRequest, now: datetime) -> Refusal | None:
        async with self._lock:
            for job_id, (user, _, at) in list(self.admitted.items()):
                state = self.status(job_id)
                if user == req.user_id and (
                    state in TERMINAL or (state is None and at < now - STALE_AFTER)
                ):
                    del self.admitted[job_id]
            active = sum(1 for user, _, _ in self.admitted.values() if user == req.user_id)
            day, count = self.images.get(req.user_id, (None, 0))
            refusal = admit(req, active, count, day, now)
            if refusal is None:
                today = now.date()
                self.images[req.user_id] = (today, (count if day == today else 0) + req.images)
                self.admitted.setdefault(req.job_id, (req.user_id, req.images, now))
            return refusal

    async def release(self, user_id: str, job_id: str) -> None:
        async with self._lock:
            held = self.admitted.get(job_id)
            if held is None or held[0] != user_id:
                return
            del self.admitted[job_id]
            day, count = self.images.get(user_id, (None, 0))
            if day == held[2].date():
                self.images[user_id] = (day, max(0, count - held[1]))
