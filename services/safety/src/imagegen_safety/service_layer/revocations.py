"""Which assignments were revoked before the record in hand, across restarts and rebalances.

A revoked assignment's worker may still publish its image (a paused worker resumes, a lost one
was only slow). The revocation precedes that late image in the job's partition of
``imagegen.jobs.generated``, so a process that read the partition in order knows of it. A process
that did not (it started, or the group gave it the partition, after the revocation was committed)
reads the part of the partition it skipped, for revocations only, before it handles the record
in hand. The chaos soak found the gap this closes: safety committed a revocation, was killed, and
its successor judged the late image, which delivery then delivered (ADR 0303).

"Before" is log order, as every decider reads it: a revocation after an image in the partition
does not make that image stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from imagegen_runtime.kafka import RecordMeta
from imagegen_schemas.jobs import AssignmentRevoked, ImageGenerated


class RevocationLog(Protocol):
    """Reads a partition's revocations (a port: Kafka in production, a list in unit tests)."""

    async def read(
        self, topic: str, partition: int, start: int, end: int
    ) -> Sequence[tuple[int, AssignmentRevoked]]:
        """Each ``AssignmentRevoked`` at offsets ``[start, end)`` with its offset, in order.

        Offsets below the partition's first retained one are skipped. Records that do not parse
        are skipped too: the consumer itself meets them and dead-letters them. A broker fault
        raises a transient error (the consumer retries the record in hand).
        """
        ...


class Revocations:
    """The revocations of one topic, as of each record this process handles."""

    def __init__(self, log: RevocationLog) -> None:
        self._log = log
        self._read_to: dict[tuple[str, int], int] = {}  # next offset not yet accounted for
        self._revoked: dict[str, set[tuple[int, int, int]]] = {}  # job: (partition, offset, token)

    async def catch_up(self, meta: RecordMeta) -> None:
        """Read the revocations this process skipped in ``meta``'s partition before ``meta``."""
        where = (meta.topic, meta.partition)
        start = self._read_to.get(where, 0)
        if meta.offset > start:
            for offset, revoked in await self._log.read(
                meta.topic, meta.partition, start, meta.offset
            ):
                self._add(meta.partition, offset, revoked)
        self._read_to[where] = max(start, meta.offset)

    def seen(self, meta: RecordMeta, payload: object) -> None:
        """``meta``'s record was handled (a revocation is remembered)."""
        if isinstance(payload, AssignmentRevoked):
            self._add(meta.partition, meta.offset, payload)
        where = (meta.topic, meta.partition)
        self._read_to[where] = max(self._read_to.get(where, 0), meta.offset + 1)

    def stale(self, meta: RecordMeta, image: ImageGenerated) -> bool:
        """True when an earlier record in the partition revoked ``image``'s assignment."""
        return any(
            partition == meta.partition and offset < meta.offset and token >= image.fencing_token
            for partition, offset, token in self._revoked.get(image.job_id, ())
        )

    def _add(self, partition: int, offset: int, revoked: AssignmentRevoked) -> None:
        self._revoked.setdefault(revoked.job_id, set()).add(
            (partition, offset, revoked.fencing_token)
        )
