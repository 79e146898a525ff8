"""The Idempotency-Key rule (pure; ADR 0600).

A key names one request of one user for 24 hours. The first request to claim it picks the job id
and the seed (the *answer*), publishes, then marks the key published. Later requests with the key:

- the same request (hash of the client's body as sent, normalised) and published: the same answer;
- the same request, not yet published: 409, retry shortly;
- a different request: 422 naming the key.

Two ways a held key is taken over (``take_over``), both decided here so the in-memory and the
PostgreSQL stores agree:

1. it expired (first used ``KEY_TTL`` ago or more): a new request, a new job;
2. its holder died in flight (claimed ``CLAIM_LEASE`` ago, never published) and this is the same
   request: finish the holder's work with its answer (same job id and seed, so a publish that did
   reach the broker before the crash is the same event id, dropped as a duplicate downstream).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

KEY_TTL = timedelta(hours=24)  # a key names one request for this long after its first use
CLAIM_LEASE = timedelta(seconds=60)  # an unpublished claim older than this is a dead holder's


@dataclass(frozen=True)
class HeldKey:
    """What is kept per (user, key)."""

    request_hash: str  # sha256 of the client's request (``request_hash``)
    answer: dict[str, Any]  # {"id": job id, "seed": seed}: what every holder of the key answers
    published: bool  # the broker acknowledged the job's GenerationRequested
    created_at: datetime  # first use; the key expires KEY_TTL after it
    claimed_at: datetime  # when the current holder claimed it; its lease runs from here


@dataclass(frozen=True)
class Claim:
    won: bool  # this request holds the key now: it publishes ``held.answer``
    held: HeldKey  # the key as it stands after the claim


def request_hash(request: dict[str, Any]) -> str:
    """sha256 of a request document, independent of key order and whitespace."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def take_over(held: HeldKey | None, proposal: HeldKey) -> HeldKey | None:
    """The key this request writes, or None when it must leave the key to its holder.

    ``proposal`` is this request's own entry (its hash and answer, created and claimed now).
    """
    now = proposal.claimed_at
    if held is None or held.created_at <= now - KEY_TTL:
        return proposal
    if (
        not held.published
        and held.claimed_at <= now - CLAIM_LEASE
        and held.request_hash == proposal.request_hash
    ):
        return replace(held, claimed_at=now)
    return None
