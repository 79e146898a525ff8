"""The fleet store's contract, held by PostgreSQL and by the in-memory fake alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from imagegen_pool_manager.adapters.fleet_store import InMemoryFleetStore, PgFleetStore
from imagegen_runtime.db import make_engine

Store = InMemoryFleetStore | PgFleetStore


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield InMemoryFleetStore()
        return
    engine = make_engine(request.getfixturevalue("infra").database_url, pool_size=1)
    pg = PgFleetStore(engine, prefix=f"t{uuid.uuid4().hex[:8]}_")
    await pg.create_tables()
    try:
        yield pg
    finally:
        await pg.drop_tables()
        await engine.dispose()


def doc(worker_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "state": "idle",
        "models": [{"model_id": "tiny-sdxl", "kind": "base", "bytes": 3 << 20}],
        "largest_free_block_bytes": None,
        "last_seen": 1764547200.25,
        **extra,
    }


async def test_what_is_saved_loads_back_equal(store: Store) -> None:
    await store.save({"w1": doc("w1"), "w2": doc("w2")})
    assert await store.load() == {"w1": doc("w1"), "w2": doc("w2")}


async def test_save_upserts_changed_and_deletes_gone(store: Store) -> None:
    await store.save({"w1": doc("w1"), "w2": doc("w2")})
    await store.save({"w2": doc("w2", state="busy"), "w3": doc("w3")}, frozenset({"w1"}))
    assert await store.load() == {"w2": doc("w2", state="busy"), "w3": doc("w3")}


async def test_replace_leaves_exactly_the_given_documents(store: Store) -> None:
    await store.save({"w1": doc("w1"), "w2": doc("w2")})
    await store.replace({"w3": doc("w3")})
    assert await store.load() == {"w3": doc("w3")}
    await store.replace({})
    assert await store.load() == {}
