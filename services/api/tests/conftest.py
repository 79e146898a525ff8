"""Fixtures of the api tests: the real routes on the in-memory fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from api_testkit import Api, make_app, make_deps

from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Plan


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    deps = make_deps()
    key = await deps.accounts.create_key("alice", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        assert isinstance(deps.publisher, InMemoryPublisher)
        yield Api(client, deps, deps.publisher, key)
