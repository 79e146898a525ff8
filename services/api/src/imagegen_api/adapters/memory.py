"""In-memory fakes of the api's ports, for fast tests.

They keep the PostgreSQL adapters' semantics, pinned by the same contract tests
(``tests/test_ports_contract.py``): stored state goes through the same JSON round trip, and the
timeline is ordered by a sequence number like the ``job_events`` table's identity column.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imagegen_schemas import Envelope, Payload, Plan

from ..domain.job import JobView, evolve
from ..domain.plans import Caller
from .accounts import hash_key, new_key
from .jobstore import from_json, to_json


@dataclass
class _HeldKey:
    job_id: str
    request_hash: str
    published: bool


class InMemoryAccounts:
    """API keys and idempotency keys in dictionaries (one event loop; no threads)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[Caller, bool]] = {}  # key hash -> (caller, revoked)
        self.idempotency: dict[tuple[str, str], _HeldKey] = {}

    async def create_key(self, user_id: str, plan: Plan) -> str:
        key = new_key()
        self.keys[hash_key(key)] = (Caller(user_id, plan), False)
        return key

    async def caller(self, key: str) -> Caller | None:
        found = self.keys.get(hash_key(key))
        return found[0] if found and not found[1] else None

    async def claim(
        self, user_id: str, key: str, job_id: str, request_hash: str
    ) -> tuple[bool, str, str]:
        held = self.idempotency.get((user_id, key))
        if held is None:
            self.idempotency[(user_id, key)] = _HeldKey(job_id, request_hash, False)
            return True, job_id, request_hash
        return False, held.job_id, held.request_hash

    async def mark_published(self, user_id: str, key: str) -> None:
        self.idempotency[(user_id, key)].published = True

    async def release(self, user_id: str, key: str) -> None:
        self.idempotency.pop((user_id, key), None)

    async def wait_published(self, user_id: str, key: str, timeout_s: float = 30.0) -> bool | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = self.idempotency.get((user_id, key))
            if held is None:
                return None
            if held.published:
                return True
            await asyncio.sleep(0.02)  # between looks at the holder's entry
        return False


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
        if job_id is None or env.event_id in self.processed:
            return False
        before = self.states.get(job_id)
        after = evolve(from_json(before) if before else JobView(job_id=job_id), env, payload)
        self.processed.add(env.event_id)
        self.states[job_id] = to_json(after)
        self.events.append(
            {
                "seq": len(self.events) + 1,
                "job_id": job_id,
                "type": env.type,
                "occurred_at": env.occurred_at,
                "data": json.loads(json.dumps(env.data)),  # as JSONB gives it back
                "event_id": env.event_id,
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
