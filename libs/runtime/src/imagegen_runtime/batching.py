"""Group commit: many concurrent callers, one round trip (ADR 0640).

:class:`GroupCommit` runs ``flush(items)`` for the items its callers submitted and hands each
caller its own result. It never waits to fill a batch: when no flush is running, the first item
starts one at once; items that arrive while it runs wait for it and go together in the next
one. So a lone request costs one flush, as it would without batching, and under load one
transaction serves everyone who arrived during the previous one (the batch grows with the load).

``flush`` returns one result per item, in order; a result that is an exception is raised to that
caller only. If ``flush`` itself raises, every caller of that batch gets the error (a database
outage reaches each request as it would have without batching).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        max_batch: int = 256,
    ) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None
        self.flushes = 0  # batches run so far (for tests and metrics)
        self.items = 0  # items flushed so far

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._run(batch)
        finally:
            self._running = None

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.flushes += 1
        self.items += len(batch)
        try:
            results = await self._flush([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush returned {len(results)} results for {len(batch)}")
        except BaseException as exc:  # every caller of this batch sees the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
