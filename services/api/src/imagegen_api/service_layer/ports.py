"""The ports of the api service: what the service layer and the HTTP routes need from storage.

Each port has a PostgreSQL adapter (``adapters.accounts.PgAccounts``, ``adapters.jobstore.
PgJobStore``) and an in-memory fake (``adapters.memory``); both pass the same contract tests
(``tests/test_ports_contract.py``), so a unit test against a fake says what production does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from imagegen_schemas import Envelope, Payload, Plan

from ..domain.idempotency import Claim, HeldKey
from ..domain.job import JobView
from ..domain.limits import JobRequest, Limits, Refusal, Take
from ..domain.plans import Caller


class Accounts(Protocol):
    """API keys and idempotency keys."""

    async def create_key(self, user_id: str, plan: Plan) -> str:
        """A new API key for ``user_id``; only its hash is kept."""
        ...

    async def caller(self, key: str) -> Caller | None:
        """The owner of a live (not revoked) key, else None."""
        ...

    async def claim(self, user_id: str, key: str, proposal: HeldKey) -> Claim:
        """Claim an idempotency key atomically, as ``domain.idempotency.take_over`` decides.

        ``proposal`` is this request's entry; the answer says whether it won and the key's entry
        as it stands (the holder's, when it did not win).
        """
        ...

    async def mark_published(self, user_id: str, key: str, job_id: str) -> None:
        """The job of the key's answer was published: later requests get the answer."""
        ...

    async def release(self, user_id: str, key: str, claimed_at: datetime) -> None:
        """The holder that claimed at ``claimed_at`` could not publish: free the key (unless
        it was published or taken over meanwhile) so a retry can succeed."""
        ...


class JobStore(Protocol):
    """The job read model: written by the projector, read by the routes."""

    async def apply(
        self, env: Envelope, payload: Payload, topic: str, partition: int, offset: int
    ) -> bool:
        """Apply one event atomically with its processed-event record; False on redelivery."""
        ...

    async def get(self, job_id: str) -> JobView | None: ...

    async def timeline(self, job_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        """The job's events after ``after_seq``: seq, type, occurred_at, data, event_id."""
        ...

    async def queue_position(self, job: JobView) -> int:
        """Jobs of the same tier waiting ahead of ``job`` (created earlier, not yet scheduled)."""
        ...

    async def all_states(self) -> dict[str, dict[str, Any]]:
        """Every job's state as stored JSON (for replay verification)."""
        ...


class FileStore(Protocol):
    """Uploaded control images, shared with the workers (``adapters.files``; ADR 0706)."""

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its file id; raises OSError when it cannot."""
        ...

    def exists(self, name: str) -> bool:
        """Whether a file of that id is stored."""
        ...


class Limiter(Protocol):
    """Limits and quotas per user, shared by every API instance (``adapters.limiter``; ADR
    0640)."""

    async def take(self, user_id: str, limits: Limits, now: datetime) -> Take:
        """One request of ``user_id`` against their request bucket."""
        ...

    async def admit(self, req: JobRequest, now: datetime) -> Refusal | None:
        """Room for one more active job and ``req.images`` more images today (None), else the
        limit that refuses it. An admitted job counts until it ends or is released."""
        ...

    async def release(self, user_id: str, job_id: str) -> None:
        """The admitted job was never published: give back its slot and images."""
        ...
