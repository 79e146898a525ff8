"""The fault model's classification (ADR 0008): transient or not, by exception type."""

from __future__ import annotations

import asyncpg
import pytest
from confluent_kafka import KafkaError, KafkaException
from sqlalchemy import exc as sa

from imagegen_runtime.faults import (
    Backoff,
    TransientError,
    describe,
    is_lost_membership,
    is_transient,
)

pytestmark = pytest.mark.unit


def kafka(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised from ``inner`` (as adapters wrap a driver's error)."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as got:
        return got


def suppressed(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised ``from None`` while handling ``inner``: not caused by it."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer from None
    except BaseException as got:
        return got


@pytest.mark.parametrize(
    "exc",
    [
        TransientError("blob store away"),
        OSError(5, "I/O error"),
        PermissionError(13, "blob folder unwritable"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        sa.OperationalError("select 1", {}, ConnectionRefusedError()),
        sa.InterfaceError("select 1", {}, Exception("connection is closed")),
        sa.DBAPIError("select 1", {}, Exception("gone"), connection_invalidated=True),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        kafka(KafkaError._MSG_TIMED_OUT),
        kafka(KafkaError._TRANSPORT),
        kafka(KafkaError._ALL_BROKERS_DOWN),
        wrapped(ConnectionResetError(), RuntimeError("effect failed")),
    ],
    ids=repr,
)
def test_infrastructure_faults_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value in record"),
        KeyError("job"),
        AttributeError("module 'diffusers' has no attribute 'DDIMScheduler'"),
        sa.IntegrityError("insert", {}, Exception("duplicate key")),
        sa.DBAPIError("insert", {}, Exception("invalid byte sequence 0x00")),
        asyncpg.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"),
        kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED),
        kafka(KafkaError.MSG_SIZE_TOO_LARGE),
        suppressed(OSError(), ValueError("bug")),
    ],
    ids=repr,
)
def test_other_errors_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._MAX_POLL_EXCEEDED,
        KafkaError._TRANSPORT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    ],
)
def test_commit_errors_of_a_lost_membership(code: int) -> None:
    assert is_lost_membership(kafka(code))


def test_other_commit_errors_are_not_swallowed() -> None:
    assert not is_lost_membership(kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not is_lost_membership(ValueError("x"))


def test_backoff_grows_exponentially_to_a_cap_with_jitter() -> None:
    low = Backoff(initial_s=0.2, cap_s=5.0, rand=lambda: 0.0)
    high = Backoff(initial_s=0.2, cap_s=5.0, rand=lambda: 1.0)
    assert [high.delay(n) for n in range(1, 7)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert [low.delay(n) for n in (1, 6, 60)] == pytest.approx([0.1, 2.5, 2.5])


def test_describe_is_one_short_line() -> None:
    text = describe(OSError("disk\nfull " + "x" * 1000))
    assert text.startswith("OSError: disk full") and "\n" not in text and len(text) <= 300
