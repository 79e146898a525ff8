"""The admission fast path around :class:`~.accounts.PgAccounts` (ADR 0640).

Per POST the API used to make about eleven PostgreSQL round trips: the key lookup, then the
idempotency claim and its ``published`` mark, each in its own transaction after a pre-ping.
:class:`FastAccounts` keeps the same answers with far fewer:

- **Key lookups are cached** for ``ttl_s`` (5 s): a revoked or rotated key stops working within
  that time (operator-auth uses the same bound). Unknown keys are cached too, so a client that
  hammers with a bad key does not reach the database each time; the cache holds at most
  ``max_entries`` keys (the oldest go first).
- **Claims and marks are group-committed** (``imagegen_runtime.batching``): one ``INSERT ...
  ON CONFLICT DO NOTHING`` claims every new key that arrived meanwhile, one ``UPDATE`` marks every
  published one. Marks run in the background: the answer does not wait for them. A key that
  exists already (a retry, a takeover) takes the adapter's own path, row lock and all, so ADR
  0600's rules are decided in one place.

Everything else is passed through to the wrapped adapter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen_runtime.batching import GroupCommit
from imagegen_runtime.db import retry_if_disconnected

from ..domain.idempotency import Claim, HeldKey
from ..domain.plans import Caller
from .accounts import PgAccounts, hash_key

log = logging.getLogger(__name__)

_CLAIM = text(
    "insert into idempotency_keys"
    " (user_id, key, job_id, request_hash, published, created_at, answer, claimed_at)"
    " select u, k, j, h, false, c, a, l"
    " from unnest(:users, :keys, :jobs, :hashes, :created, :answers, :claimed)"
    " as v(u, k, j, h, c, a, l) on conflict do nothing returning user_id, key"
).bindparams(
    bindparam("users", type_=ARRAY(String)),
    bindparam("keys", type_=ARRAY(String)),
    bindparam("jobs", type_=ARRAY(String)),
    bindparam("hashes", type_=ARRAY(String)),
    bindparam("created", type_=ARRAY(DateTime(timezone=True))),
    bindparam("answers", type_=ARRAY(JSONB)),
    bindparam("claimed", type_=ARRAY(DateTime(timezone=True))),
)
_OURS = text(
    "select i.user_id, i.key from idempotency_keys i"
    " join unnest(:users, :keys, :jobs) as v(u, k, j)"
    " on i.user_id = v.u and i.key = v.k and i.job_id = v.j"
).bindparams(
    bindparam("users", type_=ARRAY(String)),
    bindparam("keys", type_=ARRAY(String)),
    bindparam("jobs", type_=ARRAY(String)),
)
_MARK = text(
    "update idempotency_keys i set published = true"
    " from unnest(:users, :keys, :jobs) as v(u, k, j)"
    " where i.user_id = v.u and i.key = v.k and i.job_id = v.j"
).bindparams(
    bindparam("users", type_=ARRAY(String)),
    bindparam("keys", type_=ARRAY(String)),
    bindparam("jobs", type_=ARRAY(String)),
)


class FastAccounts:
    def __init__(
        self,
        accounts: PgAccounts,
        engine: AsyncEngine,
        *,
        marks_engine: AsyncEngine | None = None,
        ttl_s: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        self.inner = accounts
        self.engine = engine
        # A mark lost in a database crash only delays the answer to a retry: it sees the claim
        # unpublished (409), takes it over when the lease ends and republishes the same event,
        # which consumers drop. So marks may go through an async-commit engine; claims never.
        self.marks_engine = marks_engine or engine
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._callers: OrderedDict[str, tuple[float, Caller | None]] = OrderedDict()
        self._claims: GroupCommit[tuple[str, str, HeldKey], bool] = GroupCommit(self._claim_new)
        self._marks: GroupCommit[tuple[str, str, str], None] = GroupCommit(self._mark_batch)
        self._marking: dict[tuple[str, str], asyncio.Task[None]] = {}  # marks in flight

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def caller(self, key: str) -> Caller | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._callers.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self.inner.caller(key)
        self._callers[digest] = (now + self.ttl_s, found)
        self._callers.move_to_end(digest)
        while len(self._callers) > self.max_entries:
            self._callers.popitem(last=False)
        return found

    async def claim(self, user_id: str, key: str, proposal: HeldKey) -> Claim:
        if await self._claims.submit((user_id, key, proposal)):
            return Claim(True, proposal)
        await self._settled(user_id, key)  # this instance published it: the retry sees the mark
        return await self.inner.claim(user_id, key, proposal)  # held: ADR 0600's rules

    async def mark_published(self, user_id: str, key: str, job_id: str) -> None:
        """Mark in the background (group-committed): the 202 does not wait for it. A retry
        that reaches this instance waits for the mark (``claim``); one that reaches another
        instance first may get 409 for those milliseconds, as while publishing."""
        task = asyncio.create_task(self._mark(user_id, key, job_id))
        self._marking[(user_id, key)] = task
        task.add_done_callback(lambda _: self._forget(user_id, key, task))

    async def _mark(self, user_id: str, key: str, job_id: str) -> None:
        try:
            await self._marks.submit((user_id, key, job_id))
        except Exception:  # the claim's lease ends; a retry then republishes the same event
            log.warning("could not mark an idempotency key published", exc_info=True)

    def _forget(self, user_id: str, key: str, task: asyncio.Task[None]) -> None:
        if self._marking.get((user_id, key)) is task:
            del self._marking[(user_id, key)]

    async def _claim_new(self, items: list[tuple[str, str, HeldKey]]) -> Sequence[bool]:
        """Insert every key not held yet; True for those this batch inserted."""
        # One key twice in a batch: the second waits for the adapter's path (it sees the first).
        firsts: dict[tuple[str, str], int] = {}
        for i, (user, key, _) in enumerate(items):
            firsts.setdefault((user, key), i)
        rows = [items[i] for i in sorted(firsts.values())]
        params = {
            "users": [u for u, _, _ in rows],
            "keys": [k for _, k, _ in rows],
            "jobs": [p.answer["id"] for _, _, p in rows],
            "hashes": [p.request_hash for _, _, p in rows],
            "created": [p.created_at for _, _, p in rows],
            "answers": [p.answer for _, _, p in rows],
            "claimed": [p.claimed_at for _, _, p in rows],
        }

        async def insert(again: bool) -> set[tuple[str, str]]:
            async with self.engine.begin() as conn:
                won = {(r.user_id, r.key) for r in await conn.execute(_CLAIM, params)}
                if again:  # the first run's commit may have landed: its rows are ours too
                    ours = {n: params[n] for n in ("users", "keys", "jobs")}
                    won |= {(r.user_id, r.key) for r in await conn.execute(_OURS, ours)}
                return won

        won = await retry_if_disconnected(insert)
        return [
            firsts[(user, key)] == i and (user, key) in won
            for i, (user, key, _) in enumerate(items)
        ]

    async def _mark_batch(self, items: list[tuple[str, str, str]]) -> Sequence[None]:
        params = {
            "users": [u for u, _, _ in items],
            "keys": [k for _, k, _ in items],
            "jobs": [j for _, _, j in items],
        }

        async def update(_: bool) -> None:  # setting a flag twice is harmless
            async with self.marks_engine.begin() as conn:
                await conn.execute(_MARK, params)

        await retry_if_disconnected(update)
        return [None] * len(items)

    async def release(self, user_id: str, key: str, claimed_at: datetime) -> None:
        await self._settled(user_id, key)
        await self.inner.release(user_id, key, claimed_at)

    async def _settled(self, user_id: str, key: str) -> None:
        """Once this instance's mark of the key (if any) is in the database."""
        marking = self._marking.get((user_id, key))
        if marking is not None:
            await asyncio.wait([marking])
