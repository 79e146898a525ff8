"""Where the fleet projection is kept: PostgreSQL in production, a dict in unit tests.

One row per worker, the worker's projected JSON document (``domain.fleet.project``). The table
is a projection: the pool-manager rebuilds it from the log at every start (ADR 0700), so
dropping it loses nothing. Both stores pass ``tests/test_fleet_store_contract.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, delete, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncEngine

J = JSON().with_variant(JSONB(), "postgresql")
Docs = Mapping[str, Mapping[str, Any]]


def fleet_table(metadata: MetaData, prefix: str = "") -> Table:
    return Table(
        f"{prefix}pool_fleet",
        metadata,
        Column("worker_id", String(256), primary_key=True),
        Column("doc", J, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )


class PgFleetStore:
    """``prefix`` names a separate table (tests run side by side in one database)."""

    def __init__(self, engine: AsyncEngine, prefix: str = "") -> None:
        self.engine = engine
        self.metadata = MetaData()
        self.table = fleet_table(self.metadata, prefix)

    async def create_tables(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)

    async def drop_tables(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.drop_all)

    async def save(self, changed: Docs, gone: frozenset[str] = frozenset()) -> None:
        """Upsert ``changed`` and delete ``gone``, in one transaction."""
        now = datetime.now(UTC)
        table = self.table
        async with self.engine.begin() as conn:
            if gone:
                await conn.execute(delete(table).where(table.c.worker_id.in_(gone)))
            for worker_id, doc in sorted(changed.items()):
                stmt = insert(table).values(worker_id=worker_id, doc=dict(doc), updated_at=now)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[table.c.worker_id],
                        set_={"doc": stmt.excluded.doc, "updated_at": stmt.excluded.updated_at},
                    )
                )

    async def replace(self, docs: Docs) -> None:
        """Make the table hold exactly ``docs`` (a rebuilt projection)."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(self.table))
        await self.save(docs)

    async def load(self) -> dict[str, dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(self.table.c.worker_id, self.table.c.doc))).all()
        return {worker_id: dict(doc) for worker_id, doc in sorted(rows)}


class InMemoryFleetStore:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.writes = 0  # save/replace calls (tests count them)

    async def create_tables(self) -> None:
        return None

    async def drop_tables(self) -> None:
        self.docs = {}

    async def save(self, changed: Docs, gone: frozenset[str] = frozenset()) -> None:
        self.writes += 1
        for worker_id in gone:
            self.docs.pop(worker_id, None)
        for worker_id, doc in changed.items():
            self.docs[worker_id] = dict(doc)

    async def replace(self, docs: Docs) -> None:
        self.docs = {}
        await self.save(docs)

    async def load(self) -> dict[str, dict[str, Any]]:
        return {w: dict(d) for w, d in sorted(self.docs.items())}
