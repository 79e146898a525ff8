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
from imagegen_runtime.tracing import tag_job
from imagegen_schemas import GenerationParams
from imagegen_schemas.jobs import GenerationRequested

from ..domain.idempotency import HeldKey
from ..domain.limits import JobRequest, Limits, Refusal
from ..domain.plans import PLANS, Caller
from .ports import Accounts, Limiter

log = logging.getLogger(__name__)
_NS = uuid.UUID("8f0d7f43-3c1e-4a86-9a3b-0c6f2b9f7e11")


class IdempotencyConflict(Exception):
    """The key was used before with a different request body."""


class InFlight(Exception):
    """The first request with this key has not published yet: retry shortly."""


class LimitExceeded(Exception):
    """A limit of the caller's plan refuses the request (429; ADR 0640)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass(frozen=True)
class Quota:
    """Where a submission's room is checked: the shared limiter and the caller's limits."""

    limiter: Limiter
    limits: Limits
    now: datetime


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
    quota: Quota | None = None,
) -> Accepted:
    """Accept one generation. With ``quota``, a new job (not an idempotent replay) must fit the
    caller's active jobs and images per day, else :class:`LimitExceeded` and nothing is
    published; a job admitted and then not published gives its room back."""
    job_id = str(uuid.uuid4())
    if idempotency is None:
        tag_job(job_id)  # the request's span names its job (ADR 0800)
        await _admit(caller, job_id, params, quota)
        try:
            await _publish(caller, params, webhook_url, None, job_id, publisher)
        except BaseException:
            await _release(caller, job_id, quota)
            raise
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
        tag_job(held.answer["id"])
        return Accepted(held.answer["id"], held.answer["seed"], replayed=True)
    job_id, seed = held.answer["id"], held.answer["seed"]  # a dead holder's, when taken over
    tag_job(job_id)
    try:
        await _admit(caller, job_id, params, quota)
        try:
            await _publish(
                caller,
                params.model_copy(update={"seed": seed}),
                webhook_url,
                key,
                job_id,
                publisher,
            )
        except BaseException:
            await _release(caller, job_id, quota)
            raise
    except BaseException:
        try:
            await accounts.release(caller.user_id, key, held.claimed_at)
        except Exception:  # the store is down too: the claim's lease frees the key later
            log.warning("could not release idempotency key after a failed publish", exc_info=True)
        raise
    await accounts.mark_published(caller.user_id, key, job_id)
    return Accepted(job_id, seed, replayed=False)


async def _admit(
    caller: Caller, job_id: str, params: GenerationParams, quota: Quota | None
) -> None:
    if quota is None:
        return
    req = JobRequest(caller.user_id, job_id, params.num_images, quota.limits)
    refusal = await quota.limiter.admit(req, quota.now)
    if refusal is not None:
        raise LimitExceeded(refusal)


async def _release(caller: Caller, job_id: str, quota: Quota | None) -> None:
    if quota is None:
        return
    try:
        await quota.limiter.release(caller.user_id, job_id)
    except Exception:  # the store is down: the admission goes stale and stops counting later
        log.warning("could not release an admitted job after a failed publish", exc_info=True)


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
