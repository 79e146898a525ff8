"""``/readyz``: 503 with each failing check's reason; 200 when every check passes."""

from __future__ import annotations

import httpx
import pytest

from imagegen_runtime.health import CheckResult, Readiness, health_app

pytestmark = pytest.mark.unit


async def get_readyz(readiness: Readiness) -> httpx.Response:
    app = health_app("svc", readiness)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc"
    ) as client:
        return await client.get("/readyz")


async def test_readyz_names_why_each_failing_check_is_not_ready() -> None:
    readiness = Readiness()

    async def kafka() -> bool:
        return True

    async def consumer() -> CheckResult:
        return CheckResult(False, "retrying transient fault on t[0]@5: OperationalError: down")

    async def postgres() -> bool:
        raise ConnectionRefusedError(111, "Connection refused")

    async def warm() -> bool:
        return False

    for name, check in [
        ("kafka", kafka),
        ("consumer", consumer),
        ("postgres", postgres),
        ("warm", warm),
    ]:
        readiness.add(name, check)
    got = await get_readyz(readiness)
    assert got.status_code == 503
    body = got.json()
    assert body["ready"] is False
    assert body["checks"] == {"kafka": True, "consumer": False, "postgres": False, "warm": False}
    assert body["reasons"] == {
        "consumer": "retrying transient fault on t[0]@5: OperationalError: down",
        "postgres": "ConnectionRefusedError: [Errno 111] Connection refused",
        "warm": "not ready",
    }


async def test_readyz_is_200_when_all_pass() -> None:
    readiness = Readiness()

    async def ok() -> CheckResult:
        return CheckResult(True)

    readiness.add("consumer", ok)
    got = await get_readyz(readiness)
    assert (got.status_code, got.json()["checks"], got.json()["reasons"]) == (
        200,
        {"consumer": True},
        {},
    )
