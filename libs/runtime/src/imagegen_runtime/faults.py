"""The fault model every consumer shares (ADR 0008): transient, poison, or a bug to count.

- *Transient infrastructure*: the broker, the database, the blob store or the network is away
  for a while. Retried with capped exponential backoff (with jitter) for as long as it takes,
  never dead-lettered; the consumer takes no new work meanwhile and ``/readyz`` says why.
- *Poison*: the record cannot be parsed, breaks the contract, or fails the same way every time.
  Dead-lettered with the error; its job gets a terminal ``GenerationFailed(poison_event)``.
- Any other handler error (a bug one record hits) is retried a few times, then treated as poison.

Classification is by exception type, looking through ``__cause__``/``__context__`` so an error
wrapped by an adapter still counts for what it is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException


class TransientError(Exception):
    """Raised by a service for a fault that will pass (a dependency is away): retry, never DLQ."""


# librdkafka codes that mean "the broker or the network is away", retriable flag or not.
_KAFKA_TRANSIENT_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)

# A commit that fails with one of these lost nothing: this member is (or was) out of the group,
# the partition goes to its new owner, which reads from the last committed offset, and the
# record is handled again there (handlers are idempotent).
LOST_MEMBERSHIP_CODES = frozenset(
    (
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._MAX_POLL_EXCEEDED,
        KafkaError._NO_OFFSET,
        KafkaError._WAIT_COORD,
        KafkaError._STATE,
    )
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (no cycles)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        # As a traceback shows it: the explicit cause, else the implicit context unless
        # ``raise ... from None`` suppressed it.
        if cur.__cause__ is not None:
            cur = cur.__cause__
        else:
            cur = None if cur.__suppress_context__ else cur.__context__


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` inside a ``KafkaException``, if that is what ``exc`` is."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | OSError | ConnectionError | TimeoutError):
        return True
    err = kafka_error(exc)
    if err is not None:
        return bool(err.retriable()) or err.code() in _KAFKA_TRANSIENT_CODES
    return _is_transient_sql(exc) or _is_transient_asyncpg(exc)


def _is_transient_sql(exc: BaseException) -> bool:
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover - sqlalchemy is a runtime dependency
        return False
    if isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.TimeoutError):
        return True
    return isinstance(exc, sa.DBAPIError) and bool(exc.connection_invalidated)


def _is_transient_asyncpg(exc: BaseException) -> bool:
    try:
        import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
    except ImportError:  # pragma: no cover - asyncpg is a runtime dependency
        return False
    return isinstance(
        exc,
        asyncpg.PostgresConnectionError  # SQLSTATE class 08
        | asyncpg.ConnectionDoesNotExistError
        | asyncpg.CannotConnectNowError
        | asyncpg.OperatorInterventionError  # admin/crash shutdown (57P01, 57P02)
        | asyncpg.TooManyConnectionsError,
    )


def is_transient(exc: BaseException) -> bool:
    """True for a fault of the infrastructure that will pass: retry, never dead-letter."""
    return any(_is_transient_one(e) for e in _chain(exc))


def is_lost_membership(exc: BaseException) -> bool:
    """True for a commit error that only says this member lost (or is re-joining) its group."""
    err = kafka_error(exc)
    if err is None:
        return False
    return err.code() in LOST_MEMBERSHIP_CODES or err.code() in _KAFKA_TRANSIENT_CODES


@dataclass
class Backoff:
    """Capped exponential backoff with jitter.

    Attempt n waits between d/2 and d, where d = min(cap, initial * 2**(n-1)); the jitter keeps
    many consumers from hammering a dependency that just came back all at once. ``rand`` is
    injectable so tests can pin it.
    """

    initial_s: float = 0.2
    cap_s: float = 30.0
    rand: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int) -> float:
        d = min(self.cap_s, self.initial_s * 2.0 ** max(0, attempt - 1))
        return d / 2 + self.rand() * d / 2


def describe(exc: BaseException) -> str:
    """A short reason line for logs and ``/readyz``: the type and message, one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]
