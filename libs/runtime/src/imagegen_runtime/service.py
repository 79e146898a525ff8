"""The common main loop of a service: logs, tracing, HTTP (health/metrics), consumers, shutdown.

A service's ``entrypoints/main.py`` loads its settings (fail fast), calls its ``bootstrap`` and
hands the result to :func:`imagegen_runtime.standard.run_main`, which calls :func:`serve`.
One JSON log line with ``"event": "ready"`` is printed
once every readiness check passes; ``make up`` waits on ``/readyz``, not on time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI

from .health import Readiness
from .waiting import sleep_or_stop

log = logging.getLogger(__name__)

Task = Callable[[asyncio.Event], Coroutine[Any, Any, None]]  # an ``async def`` loop


@dataclass
class ServiceApp:
    """What a service's bootstrap returns: its HTTP app, background tasks and readiness checks."""

    name: str  # service name, e.g. "scheduler"
    http: FastAPI  # serves /healthz, /readyz, /metrics (and the API, for the api service)
    readiness: Readiness  # checks behind /readyz
    tasks: list[Task] = field(default_factory=list)  # long-running loops, stopped via the event
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def run_until(
    app: ServiceApp, done: Callable[[], Awaitable[bool]], timeout_s: float = 60.0
) -> None:
    """Run ``app``'s tasks (no HTTP server) until ``done()`` holds, then stop them and close.

    For tests and tools that drive a wired service in-process. Raises ``TimeoutError`` naming
    the readiness checks when ``done()`` does not hold within ``timeout_s``; a task that fails
    meanwhile raises its error.
    """
    stop = asyncio.Event()
    running = [asyncio.create_task(task(stop)) for task in app.tasks]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await done():
            failed = [t for t in running if t.done() and t.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            if loop.time() > deadline:
                checks = await app.readiness.evaluate()
                raise TimeoutError(f"not done after {timeout_s:.0f}s; readiness: {checks}")
            await asyncio.sleep(0.2)  # between polls of the condition
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        for close in app.on_shutdown:
            await close()


async def _announce_ready(app: ServiceApp, stop: asyncio.Event) -> None:
    while not stop.is_set():
        results = await app.readiness.evaluate()
        if all(results.values()):
            log.info("ready", extra={"event": "ready", "checks": results})
            return
        await sleep_or_stop(stop, 0.2)


async def serve(app: ServiceApp, host: str, port: int, *, stop_grace_s: float = 30.0) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a task crashes (exit 1, so the supervisor restarts).

    Once stopping, the tasks get ``stop_grace_s`` to finish; any still running then is
    cancelled (and logged), so a service always exits and its supervisor can restart it.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = uvicorn.Config(
        app.http, host=host, port=port, log_config=None, lifespan="on", access_log=False
    )
    # uvicorn >= 0.29 captures SIGTERM/SIGINT only while it serves and hands them back to our
    # handlers (above) when it returns, so both it and the background tasks stop.
    server = uvicorn.Server(config)
    crashed: list[BaseException] = []

    def watch(task: asyncio.Task[None]) -> None:
        # A task may finish normally (a one-off warm-up); one that raises stops the service.
        error = None if task.cancelled() else task.exception()
        if error is not None:
            crashed.append(error)
            log.error("task crashed; stopping", exc_info=error)
            stop.set()

    running: list[asyncio.Task[None]] = [
        asyncio.create_task(t(stop), name=getattr(t, "__qualname__", repr(t))) for t in app.tasks
    ]
    running.append(asyncio.create_task(_announce_ready(app, stop)))
    for task in running:
        task.add_done_callback(watch)
    http_task = asyncio.create_task(server.serve())
    http_task.add_done_callback(lambda _: stop.set())  # the HTTP server ended: port taken?
    await stop.wait()
    stop.set()
    server.should_exit = True
    _, late = await asyncio.wait([*running, http_task], timeout=stop_grace_s)
    for task in late:
        log.error(
            "task did not stop within %.0f s; cancelled",
            stop_grace_s,
            extra={"task": task.get_name()},
        )
        task.cancel()
    await asyncio.gather(*running, http_task, return_exceptions=True)
    for close in app.on_shutdown:
        await close()
    log.info("stopped", extra={"event": "stopped", "crashed": bool(crashed)})
    return 1 if crashed or not server.started else 0
