"""PostgreSQL tables of the api service: keys, idempotency, and the job projection."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()
J = JSON().with_variant(JSONB(), "postgresql")

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_hash", String(64), primary_key=True),  # sha256 of the key; the key is never stored
    Column("user_id", String(128), nullable=False),
    Column("plan", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    # Added by ADR 0610 (API_KEYS_MIGRATION for tables made before):
    Column("key_id", String(32), unique=True),  # public id: the key's first 12 characters
    Column("role", String(16), nullable=False, server_default="user"),  # user | operator
    Column("revoked_at", DateTime(timezone=True)),
)

idempotency = Table(
    "idempotency_keys",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("job_id", String(64), nullable=False),  # answer["id"], kept as a column for lookups
    Column("request_hash", String(64), nullable=False),  # same key, other body -> 422
    Column("published", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),  # first use: expiry from here
    Column("answer", J),  # {"id", "seed"}; NULL only in rows from before ADR 0600 (expired)
    Column("claimed_at", DateTime(timezone=True)),  # the current holder's claim (its lease)
)

# Columns added after the table first shipped (create_all does not alter an existing table).
IDEMPOTENCY_MIGRATION = (
    "alter table idempotency_keys add column if not exists answer jsonb, "
    "add column if not exists claimed_at timestamptz"
)


# ADR 0610: roles and public key ids. Keys made before have no id in clear: they get
# "old_" + the first 12 hex digits of their hash. One statement per entry (asyncpg).
API_KEYS_MIGRATION = (
    "alter table api_keys add column if not exists key_id varchar(32), "
    "add column if not exists role varchar(16) not null default 'user', "
    "add column if not exists revoked_at timestamptz",
    "update api_keys set key_id = 'old_' || substr(key_hash, 1, 12) where key_id is null",
    "create unique index if not exists api_keys_key_id_key on api_keys (key_id)",
)


def job_tables(md: MetaData, prefix: str = "") -> tuple[Table, Table, Table]:
    """The projection's tables; ``prefix`` gives a second set for `replay --rebuild`."""
    jobs = Table(
        f"{prefix}jobs",
        md,
        Column("job_id", String(64), primary_key=True),
        Column("user_id", String(128), nullable=False, index=True),
        Column("tier", String(16), nullable=False),
        Column("status", String(16), nullable=False, index=True),
        Column("state", J, nullable=False),  # the whole JobView as JSON
        Column("created_at", DateTime(timezone=True)),
        Column("updated_at", DateTime(timezone=True)),
    )
    events = Table(
        f"{prefix}job_events",
        md,
        Column("seq", BigInteger, Identity(), primary_key=True),
        Column("job_id", String(64), nullable=False, index=True),
        Column("event_id", String(64), nullable=False),
        Column("type", String(128), nullable=False),
        Column("occurred_at", DateTime(timezone=True), nullable=False),
        Column("data", J, nullable=False),
        UniqueConstraint("event_id", name=f"{prefix}job_events_event_id_key"),
    )
    processed = Table(  # the projection's processed-event record, same transaction as the change
        f"{prefix}processed_events",
        md,
        Column("event_id", String(64), primary_key=True),
        Column("topic", Text, nullable=False),
        Column("partition", Integer, nullable=False),
        Column("offset", BigInteger, nullable=False),
    )
    return jobs, events, processed
