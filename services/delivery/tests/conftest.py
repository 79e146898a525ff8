"""Fixtures of the delivery tests: settings, a controllable clock, and both stores."""

from __future__ import annotations

from pathlib import Path

import pytest
from delivery_testkit import SIGNING_KEY, FakeClock, PutSource

from imagegen_delivery.adapters.store import BlobStore, InMemoryBlobStore, LocalFileStore
from imagegen_delivery.config import DeliverySettings


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> DeliverySettings:
    return DeliverySettings(
        kafka_bootstrap="127.0.0.1:9092",
        signing_key=SIGNING_KEY,
        store_dir=tmp_path / "store",
        url_ttl_s=3600,
        public_base_url="https://dl.example.com/",
    )


@pytest.fixture(params=["memory", "local"])
def store_and_source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[BlobStore, PutSource]:
    """Each store with its way of putting a source image; tests using it run against both."""
    if request.param == "memory":
        memory = InMemoryBlobStore()

        def put_memory(name: str, data: bytes) -> str:
            memory.sources[f"memory:///{name}"] = data
            return f"memory:///{name}"

        return memory, put_memory
    blobs = tmp_path / "blobs"

    def put_file(name: str, data: bytes) -> str:
        path = blobs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path.as_uri()

    return LocalFileStore(tmp_path / "store", source_root=blobs), put_file
