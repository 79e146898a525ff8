"""Helpers of the api tests: the app on fakes, a client, a projector fed from the fake publisher."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from fastapi import FastAPI

from imagegen_api.adapters.memory import InMemoryAccounts, InMemoryJobStore
from imagegen_api.domain.validation import Catalog, ModelInfo
from imagegen_api.entrypoints.http import Deps, mount
from imagegen_api.projections.jobs import projector
from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import parse

CATALOG = Catalog(
    models={"shapes-demo": ModelInfo("shapes-demo", "sd15", 64, 256, 64)},
    loras=frozenset({"ink"}),
)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Api:
    """A client of the app, its fakes, and one API key per plan."""

    client: httpx.AsyncClient
    deps: Deps
    publisher: InMemoryPublisher
    key: str  # a pro user's key
    clock: Clock | None = None  # the app's clock, when the test controls it

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def project(self) -> None:
        """Feed every published event to the job projector (what Kafka does in production)."""
        handle = projector(self.deps.jobs)
        for offset, rec in enumerate(self.publisher.records):
            meta = RecordMeta(rec.topic, 0, offset, rec.key.decode(), {})
            await handle(rec.envelope, parse(rec.envelope), meta)


def make_app(deps: Deps) -> FastAPI:
    app = FastAPI()
    mount(app, deps)
    return app


def make_deps(**changes: object) -> Deps:
    base: dict[str, object] = dict(
        accounts=InMemoryAccounts(),
        jobs=InMemoryJobStore(),
        publisher=InMemoryPublisher(),
        catalog=CATALOG,
        default_model="shapes-demo",
        public_base_url="http://api.test",
        openai_timeout_s=5.0,
    )
    return Deps(**{**base, **changes})  # type: ignore[arg-type]
