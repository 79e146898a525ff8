"""Waiting on a stop signal: the helpers every background loop uses between rounds."""

from __future__ import annotations

import asyncio


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set, whichever comes first; True if stopping."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def wait_or_stop(event: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait until ``event`` or ``stop`` is set; True if ``event`` is (and we are not stopping).

    A loop that waits for a condition (a consumer caught up) must still see ``stop``: a service
    whose consumer crashed before the condition held would otherwise never finish stopping.
    """
    if not event.is_set() and not stop.is_set():
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
    return event.is_set() and not stop.is_set()
