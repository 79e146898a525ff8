"""In-memory fakes of the api's ports, for fast tests.

They keep the PostgreSQL adapters' semantics, pinned by the same contract tests
(``tests/test_ports_contract.py``): stored state goes through the same JSON round trip, and the
timeline is ordered by a sequence number like the ``job_events`` table's identity column.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Any

from imagegen_schemas import Envelope, Payload, Plan

from ..domain.idempotency import Claim, HeldKey, take_over
from ..domain.job import JobView, evolve
from ..domain.plans import Caller
from .accounts import hash_key, new_key
from .jobstore import from_json, storable, to_json


class InMemoryAccounts:
    """API keys and idempotency keys in dictionaries (one event loop, no await inside a claim:
    each method is atomic like the PostgreSQL adapter's transaction)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[Caller, bool]] = {}  # key hash -> (caller, revoked)
        self.idempotency: dict[tuple[str, str], HeldKey] = {}

    async def create_key(self, user_id: str, plan: Plan) -> str:
        key = new_key()
        self.keys[hash_key(key)] = (Caller(user_id, plan), False)
        return key

    async def caller(self, key: str) -> Caller | None:
        found = self.keys.get(hash_key(key))
        return found[0] if found and not found[1] else None

    async def claim(self, user_id: str, key: str, proposal: HeldKey) -> Claim:
        held = self.idempotency.get((user_id, key))
        taken = take_over(held, proposal)
        if taken is None:
            assert held is not None
            return Claim(False, held)
        self.idempotency[(user_id, key)] = taken
        return Claim(True, taken)

    async def mark_published(self, user_id: str, key: str, job_id: str) -> None:
        held = self.idempotency.get((user_id, key))
        if held is not None and held.answer["id"] == job_id:
            self.idempotency[(user_id, key)] = replace(held, published=True)

    async def release(self, user_id: str, key: str, claimed_at: datetime) -> None:
        held = self.idempotency.get((user_id, key))
        if held is not None and held.claimed_at == claimed_at and not held.published:
            del self.idempotency[(user_id, key)]


class InMemoryJobStore:
    """The job projection in dictionaries."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}  # job id -> JobView as stored JSON
        self.events: list[dict[str, Any]] = []  # timeline rows, seq ascending
        self.processed: set[str] = set()  # event ids applied

    async def apply(
        self, env: Envelope, payload: Payload, topic: str, partition: int, offset: int
    ) -> bool:
        job_id = getattr(payload, "job_id", None)
        if job_id is None:
            return False
        job_id, event_id = storable(job_id), storable(env.event_id)
        if event_id in self.processed:
            return False
        before = self.states.get(job_id)
        after = evolve(from_json(before) if before else JobView(job_id=job_id), env, payload)
        self.processed.add(event_id)
        self.states[job_id] = to_json(after)
        self.events.append(
            {
                "seq": len(self.events) + 1,
                "job_id": job_id,
                "type": storable(env.type),
                "occurred_at": env.occurred_at,
                "data": json.loads(json.dumps(storable(env.data))),  # as JSONB gives it back
                "event_id": event_id,
            }
        )
        return True

    async def get(self, job_id: str) -> JobView | None:
        state = self.states.get(job_id)
        return from_json(state) if state else None

    async def timeline(self, job_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        keep = ("seq", "type", "occurred_at", "data", "event_id")
        return [
            {k: e[k] for k in keep}
            for e in self.events
            if e["job_id"] == job_id and e["seq"] > after_seq
        ]

    async def queue_position(self, job: JobView) -> int:
        if job.created_at is None:
            return 0
        created: datetime = job.created_at
        return sum(
            1
            for s in self.states.values()
            if s["tier"] == job.tier
            and s["status"] in ("moderating", "queued")
            and s["created_at"] is not None
            and datetime.fromisoformat(s["created_at"]) < created
        )

    async def all_states(self) -> dict[str, dict[str, Any]]:
        return dict(self.states)
