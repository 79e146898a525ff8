"""Submitting a generation: validate, claim the idempotency key, publish, answer.

A job is accepted only once the broker acknowledged its ``GenerationRequested`` event (acks=all):
after that it cannot be lost. With an ``Idempotency-Key``, the job id is derived from the caller
and the key, one request wins the key, and every other request waits for it and gets the same job.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

from imagegen_runtime.publishing import Publisher
from imagegen_schemas import GenerationParams
from imagegen_schemas.jobs import GenerationRequested

from ..domain.plans import PLANS, Caller
from .ports import Accounts

_NS = uuid.UUID("8f0d7f43-3c1e-4a86-9a3b-0c6f2b9f7e11")


class IdempotencyConflict(Exception):
    """The key was used before with a different request body."""


class Unavailable(Exception):
    """The broker did not acknowledge; nothing was accepted."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    replayed: bool  # True when an earlier request with the same Idempotency-Key created it


def request_hash(params: GenerationParams, webhook_url: str | None) -> str:
    body = json.dumps({"p": params.model_dump(mode="json"), "w": webhook_url}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


async def submit(
    caller: Caller,
    params: GenerationParams,
    webhook_url: str | None,
    idempotency_key: str | None,
    accounts: Accounts,
    publisher: Publisher,
) -> Accepted:
    limits = PLANS[caller.plan]
    if idempotency_key is None:
        job_id = str(uuid.uuid4())
    else:
        job_id = str(uuid.uuid5(_NS, f"{caller.user_id}\0{idempotency_key}"))
        digest = request_hash(params, webhook_url)
        won, held_job, held_hash = await accounts.claim(
            caller.user_id, idempotency_key, job_id, digest
        )
        if not won:
            if held_hash != digest:
                raise IdempotencyConflict(idempotency_key)
            state = await accounts.wait_published(caller.user_id, idempotency_key)
            if state is True:
                return Accepted(held_job, replayed=True)
            if state is None:  # the holder failed and released the key: try to win it
                return await submit(
                    caller, params, webhook_url, idempotency_key, accounts, publisher
                )
            raise Unavailable("an earlier request with this Idempotency-Key is still in flight")
    event = GenerationRequested(
        job_id=job_id,
        user_id=caller.user_id,
        plan=caller.plan,
        tier=limits.tier,
        params=params,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
    )
    try:
        await publisher.publish(
            event, key=job_id, event_id=str(uuid.uuid5(_NS, f"requested\0{job_id}"))
        )
    except Exception as exc:
        if idempotency_key is not None:
            await accounts.release(caller.user_id, idempotency_key)
        raise Unavailable(str(exc)) from exc
    if idempotency_key is not None:
        await accounts.mark_published(caller.user_id, idempotency_key)
    return Accepted(job_id, replayed=False)
