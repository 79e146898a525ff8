"""While PostgreSQL or the broker is down, the API answers 503 with Retry-After, naming it.

The fakes raise the exception types the real clients raise. Before (issue 10) a database outage
gave 500, and a broker one 503 without Retry-After nor the dependency's name.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg
import httpx
import pytest
from api_testkit import make_app, make_deps
from confluent_kafka import KafkaError, KafkaException
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from imagegen_api.adapters.limiter import InMemoryLimiter
from imagegen_api.adapters.memory import InMemoryAccounts
from imagegen_api.domain.limits import JobRequest, Limits, Refusal, Take, with_overrides
from imagegen_api.domain.plans import Caller
from imagegen_api.entrypoints.http import Deps
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, Payload, Plan

pytestmark = pytest.mark.unit
BODY = {"prompt": "a red circle", "steps": 2}

DATABASE_DOWN: list[Callable[[], BaseException]] = [
    lambda: ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 25432)"),
    lambda: OperationalError("select 1", {}, ConnectionRefusedError(111, "refused")),
    lambda: InterfaceError("select 1", {}, Exception("connection is closed")),
    lambda: DBAPIError("select 1", {}, Exception("gone"), connection_invalidated=True),
    lambda: asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    lambda: asyncpg.exceptions.AdminShutdownError("terminating connection"),
    lambda: asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    lambda: TimeoutError(),
]


async def post_generation(deps: Deps, key: str) -> httpx.Response:
    """POST /v1/generations with ``key`` to an app on ``deps``, as a client sees the answer."""
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        return await client.post(
            "/v1/generations", json=BODY, headers={"Authorization": f"Bearer {key}"}
        )


class DownAccounts(InMemoryAccounts):
    def __init__(self, error: Callable[[], BaseException]) -> None:
        super().__init__()
        self.error = error
        self.down = False

    async def caller(self, key: str) -> Caller | None:
        if self.down:
            raise self.error()
        return await super().caller(key)


class DownPublisher(InMemoryPublisher):
    async def publish(
        self,
        payload: Payload,
        *,
        key: str,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))


@pytest.mark.parametrize("error", DATABASE_DOWN)
async def test_database_down_is_503_with_retry_after(error: Callable[[], BaseException]) -> None:
    accounts = DownAccounts(error)
    deps = make_deps(accounts=accounts)
    key = await accounts.create_key("alice", Plan.PRO)
    accounts.down = True
    r = await post_generation(deps, key)
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["dependency"] == "postgresql"
    assert "postgresql" in r.json()["detail"]


@pytest.mark.parametrize(
    "path", ["/v1/generations", "/v1/images/generations"], ids=["generations", "openai"]
)
async def test_broker_down_is_503_with_retry_after(path: str) -> None:
    deps = make_deps(publisher=DownPublisher())
    key = await deps.accounts.create_key("alice", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        r = await client.post(path, json=BODY, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    message = body["error"]["message"] if path.endswith("images/generations") else body["detail"]
    assert "kafka" in message


async def test_a_bug_is_still_a_500_not_a_503() -> None:
    """Only a dependency's connection trouble is 503; anything else is our fault."""
    accounts = DownAccounts(lambda: KeyError("bug"))
    deps = make_deps(accounts=accounts)
    key = await accounts.create_key("alice", Plan.PRO)
    accounts.down = True
    r = await post_generation(deps, key)
    assert r.status_code == 500


class DownLimiter(InMemoryLimiter):
    """The limiter's store down: a request's token (every call) or a job's admission."""

    def __init__(self, error: Callable[[], BaseException], at: str) -> None:
        super().__init__()
        self.error, self.at = error, at

    async def take(self, user_id: str, limits: Limits, now: datetime) -> Take:
        if self.at == "take":
            raise self.error()
        return await super().take(user_id, limits, now)

    async def admit(self, req: JobRequest, now: datetime) -> Refusal | None:
        if self.at == "admit":
            raise self.error()
        return await super().admit(req, now)


@pytest.mark.parametrize("at", ["take", "admit"])
@pytest.mark.parametrize("error", DATABASE_DOWN[:1] + DATABASE_DOWN[4:5])
async def test_the_limiter_down_is_503_naming_postgresql(
    error: Callable[[], BaseException], at: str
) -> None:
    """Regression (stop 21, the 3-worker chaos soak): a PostgreSQL restart during the limiter's
    token take answered 500 "Internal Server Error" three times; the limiter was not guarded."""
    accounts = InMemoryAccounts()
    publisher = InMemoryPublisher()
    deps = make_deps(
        accounts=accounts,
        publisher=publisher,
        limiter=DownLimiter(error, at),
        limits=with_overrides({}),
    )
    key = await accounts.create_key("alice", Plan.PRO)
    r = await post_generation(deps, key)
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["dependency"] == "postgresql"
    assert publisher.records == []  # nothing accepted
