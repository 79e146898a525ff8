"""HttpxWebhookClient against a real HTTP server on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagegen_delivery.adapters.webhooks import HttpxWebhookClient
from imagegen_delivery.domain.webhook import (
    SIGNATURE_HEADER,
    signature_header,
    verify_signature_header,
)

pytestmark = pytest.mark.unit
KEY = b"webhook-key-0123456789"


@dataclass
class Receiver:
    """What the server answers (one status per call, the last one repeats) and what it got."""

    url: str
    statuses: list[int] = field(default_factory=lambda: [204])
    delay_s: float = 0.0  # sleep before answering (timeouts)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def answer(self) -> int:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers), body))
            time.sleep(state.delay_s)
            self.send_response(state.answer())
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook?token=t"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def client(**kw: float) -> tuple[HttpxWebhookClient, list[float]]:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    opts: dict[str, float] = {"timeout_s": 2.0, "attempts": 4, "backoff_s": 0.5} | kw
    return HttpxWebhookClient(
        timeout_s=opts["timeout_s"],
        attempts=int(opts["attempts"]),
        backoff_s=opts["backoff_s"],
        sleep=sleep,
    ), waits


def signed(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", SIGNATURE_HEADER: signature_header(body, KEY)}


async def test_retries_on_500_then_succeeds_with_the_same_signed_body(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200]
    hooks, waits = client()
    body = b'{"event_id":"e-1"}'
    assert await hooks.post(receiver.url, body, signed(body)) == 200
    await hooks.close()
    assert len(receiver.received) == 3
    assert waits == [0.5, 1.0]  # exponential backoff between calls
    for headers, got in receiver.received:
        assert got == body
        assert verify_signature_header(got, headers[SIGNATURE_HEADER], KEY)
        assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("status", [400, 404, 410, 429])
async def test_a_4xx_is_final(receiver: Receiver, status: int) -> None:
    receiver.statuses = [status, 200]
    hooks, waits = client()
    assert await hooks.post(receiver.url, b"{}", signed(b"{}")) == status
    await hooks.close()
    assert len(receiver.received) == 1 and waits == []


async def test_a_redirect_is_final_and_not_followed(receiver: Receiver) -> None:
    receiver.statuses = [302]
    hooks, _ = client()
    assert await hooks.post(receiver.url, b"{}", {}) == 302
    await hooks.close()
    assert len(receiver.received) == 1


async def test_5xx_every_time_gives_the_last_status_after_all_attempts(receiver: Receiver) -> None:
    receiver.statuses = [502]
    hooks, waits = client(attempts=3)
    assert await hooks.post(receiver.url, b"{}", {}) == 502
    await hooks.close()
    assert len(receiver.received) == 3 and waits == [0.5, 1.0]


async def test_a_timeout_is_retried(receiver: Receiver) -> None:
    receiver.delay_s = 0.5
    hooks, waits = client(timeout_s=0.1, attempts=2)
    assert await hooks.post(receiver.url, b"{}", {}) is None
    await hooks.close()
    assert len(receiver.received) == 2 and waits == [0.5]


async def test_connection_refused_is_retried_then_none() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hooks, waits = client(attempts=3, backoff_s=0.01)
    assert await hooks.post(f"http://127.0.0.1:{port}/hook", b"{}", {}) is None
    await hooks.close()
    assert waits == [0.01, 0.02]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "file:///etc/passwd"])
async def test_non_http_urls_are_not_called(url: str) -> None:
    hooks, waits = client()
    assert await hooks.post(url, b"{}", {}) is None
    await hooks.close()
    assert waits == []
