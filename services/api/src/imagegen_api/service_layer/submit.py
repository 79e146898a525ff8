"""Submitting a generation: claim the idempotency key, publish, answer.

A job is accepted only once the broker acknowledged its ``GenerationRequested`` event (acks=all):
after that it cannot be lost. With an ``Idempotency-Key`` the rule of ADR 0600 applies
(``domain.idempotency``): the first request picks the job id and seed and publishes; an identical
retry gets the same answer, one still in flight gets ``InFlight`` (409), another body
``IdempotencyConflict`` (422).

Errors of the store or the broker propagate as they are: the HTTP layer tells a dependency that
is down (503) from a bug (500).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from imagegen_runtime.publishing import Publisher
from imagegen_schemas import GenerationParams
from imagegen_schemas.jobs import GenerationRequested

from ..domain.idempotency import HeldKey
from ..domain.plans import PLANS, Caller
from .ports import Accounts

log = logging.getLogger(__name__)
_NS = uuid.UUID("8f0d7f43-3c1e-4a86-9a3b-0c6f2b9f7e11")


class IdempotencyConflict(Exception):
    """The key was used before with a different request body."""


class InFlight(Exception):
    """The first request with this key has not published yet: retry shortly."""


@dataclass(frozen=True)
class IdempotentRequest:
    key: str  # the client's Idempotency-Key
    request_hash: str  # of the client's request as sent, normalised (domain.idempotency)
    now: datetime  # when it arrived (the key's expiry and the holder's lease count from here)


@dataclass(frozen=True)
class Accepted:
    job_id: str
    seed: int  # the client's, or the one the server chose (the same for every retry)
    replayed: bool  # True when an earlier request with the same Idempotency-Key created it


async def submit(
    caller: Caller,
    params: GenerationParams,
    webhook_url: str | None,
    accounts: Accounts,
    publisher: Publisher,
    idempotency: IdempotentRequest | None = None,
) -> Accepted:
    job_id = str(uuid.uuid4())
    if idempotency is None:
        await _publish(caller, params, webhook_url, None, job_id, publisher)
        return Accepted(job_id, params.seed, replayed=False)
    key = idempotency.key
    proposal = HeldKey(
        request_hash=idempotency.request_hash,
        answer={"id": job_id, "seed": params.seed},
        published=False,
        created_at=idempotency.now,
        claimed_at=idempotency.now,
    )
    claim = await accounts.claim(caller.user_id, key, proposal)
    held = claim.held
    if not claim.won:
        if held.request_hash != idempotency.request_hash:
            raise IdempotencyConflict(key)
        if not held.published:
            raise InFlight(key)
        return Accepted(held.answer["id"], held.answer["seed"], replayed=True)
    job_id, seed = held.answer["id"], held.answer["seed"]  # a dead holder's, when taken over
    try:
        await _publish(
            caller, params.model_copy(update={"seed": seed}), webhook_url, key, job_id, publisher
        )
    except BaseException:
        try:
            await accounts.release(caller.user_id, key, held.claimed_at)
        except Exception:  # the store is down too: the claim's lease frees the key later
            log.warning("could not release idempotency key after a failed publish", exc_info=True)
        raise
    await accounts.mark_published(caller.user_id, key, job_id)
    return Accepted(job_id, seed, replayed=False)


async def _publish(
    caller: Caller,
    params: GenerationParams,
    webhook_url: str | None,
    idempotency_key: str | None,
    job_id: str,
    publisher: Publisher,
) -> None:
    event = GenerationRequested(
        job_id=job_id,
        user_id=caller.user_id,
        plan=caller.plan,
        tier=PLANS[caller.plan].tier,
        params=params,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
    )
    # The event id follows from the job id: a holder that takes over a dead one's claim
    # publishes the same event, which every consumer drops as a duplicate.
    await publisher.publish(
        event, key=job_id, event_id=str(uuid.uuid5(_NS, f"requested\0{job_id}"))
    )
