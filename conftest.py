"""Shared test fixtures: the real infrastructure (Kafka + PostgreSQL) for integration tests.

Default: the project's own local processes (``deploy/stack.py infra-up``), no Docker.
``IMAGEGEN_TEST_INFRA=containers``: testcontainers' Kafka and Postgres modules instead (for
machines with Docker; not runnable here).
Each test session uses a unique topic prefix so runs never see each other's records.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str  # host:port of a real broker
    database_url: str  # postgresql+asyncpg URL of a real database
    topic_prefix: str  # unique per test session
    local: bool  # True for the project's local processes (kill -9 tests need them)


def _local_infra() -> Infra:
    subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "stack.py"), "infra-up"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "var" / "stack.env").read_text().splitlines()
        if "=" in line
    )
    url = env["IMAGEGEN_DATABASE_URL"].rsplit("/", 1)[0] + "/imagegen_test"
    return Infra(env["IMAGEGEN_KAFKA_BOOTSTRAP"], url, f"t{uuid.uuid4().hex[:8]}.", True)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    if os.environ.get("IMAGEGEN_TEST_INFRA") == "containers":
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with (
            KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka,
            PostgresContainer("postgres:16", driver="asyncpg") as pg,
        ):
            yield Infra(
                kafka.get_bootstrap_server(),
                pg.get_connection_url(),
                f"t{uuid.uuid4().hex[:8]}.",
                False,
            )
        return
    yield _local_infra()


@pytest.fixture(scope="session")
def topics(infra: Infra) -> str:
    """Creates the catalog's topics under the session's prefix; returns the prefix."""
    from imagegen_runtime.kafka import ensure_topics

    ensure_topics(infra.kafka_bootstrap, infra.topic_prefix)
    return infra.topic_prefix


@pytest.fixture(scope="session")
def s3_env(infra: Infra) -> dict[str, str]:
    """IMAGEGEN_S3_* of the local stack's S3 server (``infra-up`` starts it; docs/storage.md).
    No skip: a missing server fails here, naming what to run."""
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "var" / "stack.env").read_text().splitlines()
        if line.startswith("IMAGEGEN_S3_")
    )
    if "IMAGEGEN_S3_ENDPOINT" not in env:
        pytest.fail("var/stack.env names no S3 server: run `deploy/stack.py infra-up`")
    return env


@pytest.fixture(scope="session")
def _s3_client(s3_env: dict[str, str]) -> object:
    from imagegen_runtime.objectstore import ObjectStoreSettings, make_client

    return make_client(ObjectStoreSettings(**_s3_fields(s3_env, "unused")))


def _s3_fields(s3_env: dict[str, str], bucket: str) -> dict[str, object]:
    return {
        "endpoint": s3_env["IMAGEGEN_S3_ENDPOINT"],
        "bucket": bucket,
        "access_key": s3_env["IMAGEGEN_S3_ACCESS_KEY"],
        "secret_key": s3_env["IMAGEGEN_S3_SECRET_KEY"],
        "max_attempts": 1,
    }


@pytest.fixture
def s3_bucket(s3_env: dict[str, str], _s3_client: object) -> Iterator[object]:
    """A fresh, empty bucket on the real S3 server (an ``S3Objects``), emptied and removed after."""
    from imagegen_runtime.objectstore import ObjectStoreSettings, ObjectStoreUnavailable, S3Objects

    settings = ObjectStoreSettings(**_s3_fields(s3_env, f"test-{uuid.uuid4().hex[:12]}"))
    objects = S3Objects(settings, _s3_client)
    try:
        objects.ensure_bucket()
    except ObjectStoreUnavailable as exc:
        pytest.fail(f"S3 server at {settings.endpoint} unusable ({exc}); see var/log/s3.log")
    yield objects
    for obj in list(objects.list("")):
        objects.delete(obj.key)
    objects.client.delete_bucket(Bucket=settings.bucket)
