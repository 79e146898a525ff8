"""Calling a client's webhook: ``WebhookClient`` is the port, httpx the real adapter.

Retries: up to ``attempts`` calls, waiting ``backoff_s * 2**(n-1)`` after call ``n``, while the
receiver answers 5xx or does not answer at all (connection refused, timeout, broken response).
A 2xx, 3xx (redirects are not followed) or 4xx answer is final. The result is the last HTTP
status, or None when no call got one; the receiver's failures are recorded, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class WebhookClient(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int | None:
        """POST ``body`` with retries; the final HTTP status, or None if none was received."""
        ...

    async def close(self) -> None: ...


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class HttpxWebhookClient:
    """Webhook calls over one pooled ``httpx.AsyncClient``."""

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        attempts: int = 4,
        backoff_s: float = 0.5,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            transport=transport,
            headers={"User-Agent": "imagegen-delivery"},
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int | None:
        if not _is_http_url(url):
            log.warning("webhook url is not http(s); not called")
            return None
        host = urlsplit(url).hostname  # logged instead of the URL, which may carry a token
        status: int | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                # Streamed so the receiver's response body is never read into memory.
                async with self._client.stream(
                    "POST", url, content=body, headers=dict(headers)
                ) as response:
                    status = response.status_code
                if status < 500:
                    return status
                log.warning("webhook answered %s", status, extra={"attempt": attempt, "to": host})
            except httpx.TransportError as exc:  # connect/read errors and timeouts
                log.warning("webhook unreachable: %r", exc, extra={"attempt": attempt, "to": host})
            if attempt < self.attempts:
                await self._sleep(self.backoff_s * 2 ** (attempt - 1))
        return status

    async def close(self) -> None:
        await self._client.aclose()


@dataclass
class WebhookCall:
    """One call the fake received."""

    url: str
    body: bytes
    headers: dict[str, str]


@dataclass
class FakeWebhookClient:
    """Fake: records calls and answers ``status`` (None: as if the receiver never answered)."""

    status: int | None = 200
    calls: list[WebhookCall] = field(default_factory=list)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int | None:
        self.calls.append(WebhookCall(url, body, dict(headers)))
        return self.status

    async def close(self) -> None:
        pass
