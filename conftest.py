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
