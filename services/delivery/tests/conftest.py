"""Fixtures of the delivery tests: settings, a controllable clock, and the three stores."""

from __future__ import annotations

from pathlib import Path

import pytest
from delivery_testkit import SIGNING_KEY, FakeClock, PutSource

from imagegen_delivery.adapters.store import (
    BlobStore,
    InMemoryBlobStore,
    LocalFileStore,
    S3BlobStore,
)
from imagegen_delivery.config import DeliverySettings
from imagegen_runtime.objectstore import BLOBS_PREFIX, S3Objects


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> DeliverySettings:
    return DeliverySettings(
        kafka_bootstrap="127.0.0.1:9092",
        signing_key=SIGNING_KEY,
        database_url="postgresql+asyncpg://unused:unused@127.0.0.1:1/unused",
        webhook_retry_schedule_s=(5.0, 300.0),
        store_dir=tmp_path / "store",
        url_ttl_s=3600,
        public_base_url="https://dl.example.com/",
    )


def _s3_store(request: pytest.FixtureRequest) -> tuple[BlobStore, PutSource]:
    objects: S3Objects = request.getfixturevalue("s3_bucket")  # the real S3 server of infra-up

    def put_object(name: str, data: bytes) -> str:
        objects.put(BLOBS_PREFIX + name, data)
        return objects.uri(BLOBS_PREFIX + name)

    return S3BlobStore(objects), put_object


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("local", marks=pytest.mark.unit),
        pytest.param("s3", marks=pytest.mark.integration),
    ]
)
def contract_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[BlobStore, PutSource]:
    """The store contract's subjects: the fake, local files, and S3 on a real server."""
    if request.param == "s3":
        return _s3_store(request)
    return _memory_or_local(request.param, tmp_path)


@pytest.fixture(params=["memory", "local"])
def store_and_source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[BlobStore, PutSource]:
    """Each store with its way of putting a source image; tests using it run against both."""
    return _memory_or_local(request.param, tmp_path)


def _memory_or_local(kind: str, tmp_path: Path) -> tuple[BlobStore, PutSource]:
    if kind == "memory":
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
