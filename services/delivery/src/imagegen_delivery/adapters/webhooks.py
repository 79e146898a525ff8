"""Making one webhook call: ``WebhookSender`` is the port, httpx with a pinned address the real
adapter (docs/adr/0404, 0406).

Every call, in order:
1. :func:`imagegen_runtime.ssrf.check_url` (scheme, credentials, literal addresses): refused
   calls are never tried again.
2. Wait for a slot of the endpoint (scheme, host, port): at most ``per_endpoint`` calls to one
   endpoint at a time, so a slow receiver queues only its own calls; then for one of the
   ``max_in_flight`` slots shared by all endpoints (taken only once the endpoint's is held, so
   calls queued behind a slow endpoint hold none).
3. Resolve the host and check every answer (:func:`imagegen_runtime.ssrf.resolve`); connect to
   the address found, with the ``Host`` header and TLS SNI (and certificate check) still the
   host name, so the address checked is the address called.
4. POST with ``timeout_s`` for the whole call (connect, send, answer); redirects are not
   followed and the response body is never read. Logs name the host, never the URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from imagegen_runtime import ssrf

log = logging.getLogger(__name__)

Resolver = Callable[[ssrf.Target, ssrf.AllowList], Awaitable[ssrf.IPAddress]]


@dataclass(frozen=True)
class CallResult:
    """What one call came to."""

    status: int | None  # the HTTP status; None without an answer
    error: str = ""  # why there was no 2xx ("" when there was)
    forbidden: bool = False  # the URL or its address is refused: do not try again


class WebhookSender(Protocol):
    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> CallResult: ...
    async def close(self) -> None: ...


class EndpointLimits:
    """One semaphore per endpoint, dropped when no call holds or awaits it."""

    def __init__(self, per_endpoint: int) -> None:
        self.per_endpoint = per_endpoint
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def slot(self, endpoint: str) -> AsyncIterator[None]:
        sem, users = self._slots.get(endpoint, (asyncio.Semaphore(self.per_endpoint), 0))
        self._slots[endpoint] = (sem, users + 1)
        try:
            async with sem:
                yield
        finally:
            sem, users = self._slots[endpoint]
            if users <= 1:
                del self._slots[endpoint]
            else:
                self._slots[endpoint] = (sem, users - 1)


class PinnedHttpxSender:
    """Webhook calls over one ``httpx.AsyncClient``, each to the address its host was checked
    to resolve to."""

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        per_endpoint: int = 4,
        max_in_flight: int = 64,
        allow: ssrf.AllowList = ssrf.NOTHING_ALLOWED,
        resolver: Resolver = ssrf.resolve,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.allow = allow
        self.limits = EndpointLimits(per_endpoint)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._resolve = resolver
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            transport=transport,
            trust_env=False,  # no proxy from the environment: the pinned address is called
            headers={"User-Agent": "imagegen-delivery"},
        )

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> CallResult:
        try:
            target = ssrf.check_url(url, self.allow)
        except ssrf.ForbiddenURL as exc:
            return CallResult(None, f"refused: {exc}", forbidden=True)
        async with self.limits.slot(target.endpoint), self._in_flight:
            try:
                async with asyncio.timeout(self.timeout_s):
                    ip = await self._resolve(target, self.allow)
                    return await self._post(url, target, ip, body, headers)
            except ssrf.ForbiddenURL as exc:
                log.warning("webhook refused: %s", exc, extra={"to": target.host})
                return CallResult(None, f"refused: {exc}", forbidden=True)
            except (TimeoutError, httpx.TransportError, ssrf.Unresolvable) as exc:
                log.warning("webhook unreachable: %r", exc, extra={"to": target.host})
                return CallResult(None, f"no answer: {type(exc).__name__} {exc}".strip())

    async def _post(
        self,
        url: str,
        target: ssrf.Target,
        ip: ssrf.IPAddress,
        body: bytes,
        headers: Mapping[str, str],
    ) -> CallResult:
        pinned = httpx.URL(url).copy_with(host=str(ip))
        default_port = 443 if target.scheme == "https" else 80
        host_header = target.endpoint.split("://", 1)[1]
        if target.port == default_port:
            host_header = host_header.rsplit(":", 1)[0]
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client.build_request(
            "POST",
            pinned,
            content=body,
            headers={**headers, "Host": host_header},
            extensions=extensions,
        )
        response = await self._client.send(request, stream=True)
        await response.aclose()  # the body is never read
        status = response.status_code
        return CallResult(status, "" if 200 <= status < 300 else f"answered {status}")

    async def close(self) -> None:
        await self._client.aclose()


@dataclass
class SentCall:
    """One call the fake received."""

    url: str
    body: bytes
    headers: dict[str, str]


@dataclass
class FakeWebhookSender:
    """Fake: records calls and answers ``statuses`` in turn (then the last one again); a None
    answer is "no answer"; URLs in ``forbidden`` are refused."""

    statuses: list[int | None] = field(default_factory=lambda: [200])
    forbidden: set[str] = field(default_factory=set)
    calls: list[SentCall] = field(default_factory=list)

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> CallResult:
        if url in self.forbidden:
            return CallResult(None, "refused: forbidden by the test", forbidden=True)
        self.calls.append(SentCall(url, body, dict(headers)))
        status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        if status is None:
            return CallResult(None, "no answer")
        return CallResult(status, "" if 200 <= status < 300 else f"answered {status}")

    async def close(self) -> None:
        pass
