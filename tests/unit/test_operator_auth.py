"""Operator-only endpoints (issue 14): /metrics and the operator views admit operator keys only;
/healthz and /readyz stay open. Before: /metrics answered anyone."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI

from imagegen_runtime.health import Readiness, health_app
from imagegen_runtime.operator_auth import OperatorAuth, hash_key, mount_operator_docs

pytestmark = pytest.mark.unit
OPS, USER = "igk_operator-key", "igk_user-key"


class FakeRoles:
    """The api_keys table as a dict (key hash -> role), counting lookups."""

    def __init__(self) -> None:
        self.roles = {hash_key(OPS): "operator", hash_key(USER): "user"}
        self.lookups = 0
        self.fail: Exception | None = None

    async def role(self, key_hash: str) -> str | None:
        self.lookups += 1
        if self.fail is not None:
            raise self.fail
        return self.roles.get(key_hash)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def roles() -> FakeRoles:
    return FakeRoles()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(roles: FakeRoles, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    guard = OperatorAuth(roles, clock=clock)
    app = health_app("svc", Readiness(), guard)

    @app.get("/v1/queues", dependencies=[Depends(guard)])
    async def queues() -> dict[str, int]:
        return {"fast": 0}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as c:
        yield c


@pytest.mark.parametrize("path", ["/metrics", "/v1/queues"])
async def test_without_a_key_is_401_naming_the_header(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 401
    assert "Authorization: Bearer" in r.json()["detail"]
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert "python_info" not in r.text


@pytest.mark.parametrize("path", ["/metrics", "/v1/queues"])
async def test_an_unknown_key_is_401(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path, headers=bearer("igk_nobody"))
    assert r.status_code == 401
    assert r.json()["detail"] == "unknown or revoked API key"


@pytest.mark.parametrize("path", ["/metrics", "/v1/queues"])
async def test_a_user_key_is_403_naming_its_role(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path, headers=bearer(USER))
    assert r.status_code == 403
    assert "role 'user', not 'operator'" in r.json()["detail"]


async def test_an_operator_key_reads_the_metrics_and_views(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics", headers=bearer(OPS))
    assert r.status_code == 200 and "python_info" in r.text
    assert (await client.get("/v1/queues", headers=bearer(OPS))).json() == {"fast": 0}


async def test_health_and_readiness_stay_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json()["ready"] is True


async def test_lookups_are_cached_so_a_revoke_takes_effect_within_the_ttl(
    client: httpx.AsyncClient, roles: FakeRoles, clock: Clock
) -> None:
    for _ in range(5):
        assert (await client.get("/metrics", headers=bearer(OPS))).status_code == 200
    assert roles.lookups == 1  # one query for a burst of scrapes
    del roles.roles[hash_key(OPS)]  # revoked in the table
    clock.now += 4.9
    assert (await client.get("/metrics", headers=bearer(OPS))).status_code == 200  # cached
    clock.now += 0.2  # past the 5 s
    assert (await client.get("/metrics", headers=bearer(OPS))).status_code == 401
    assert roles.lookups == 2


async def test_a_database_fault_is_503_and_not_cached(
    client: httpx.AsyncClient, roles: FakeRoles
) -> None:
    roles.fail = ConnectionRefusedError("db away")
    r = await client.get("/metrics", headers=bearer(OPS))
    assert r.status_code == 503
    assert "could not check the API key" in r.json()["detail"]
    roles.fail = None
    assert (await client.get("/metrics", headers=bearer(OPS))).status_code == 200


async def test_without_a_key_store_metrics_are_refused_not_served() -> None:
    class Settings:
        auth_database_url = None

    guard = OperatorAuth.from_settings(Settings(), "safety")
    app = health_app("safety", Readiness(), guard)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://s.test"
    ) as c:
        r = await c.get("/metrics", headers=bearer(OPS))
    assert r.status_code == 503
    assert "IMAGEGEN_SAFETY_AUTH_DATABASE_URL" in r.json()["detail"]


async def test_a_health_app_built_without_a_guard_does_not_serve_metrics() -> None:
    app = health_app("svc", Readiness())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://s.test"
    ) as c:
        assert (await c.get("/metrics")).status_code == 503
        assert (await c.get("/healthz")).status_code == 200


async def test_operator_docs_need_an_operator_key(roles: FakeRoles) -> None:
    app = FastAPI(title="t", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v1/things")
    async def things() -> list[str]:
        return []

    mount_operator_docs(app, OperatorAuth(roles))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://a.test"
    ) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await c.get(path)).status_code == 401, path
            assert (await c.get(path, headers=bearer(USER))).status_code == 403, path
            ok = await c.get(path, headers=bearer(OPS))
            assert ok.status_code == 200, path
            assert "/v1/things" in ok.text, path  # the schema itself, inline in the pages
        spec = (await c.get("/openapi.json", headers=bearer(OPS))).json()
        assert "/docs" not in spec["paths"] and "/v1/things" in spec["paths"]
