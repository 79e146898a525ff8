"""The webhook sender against real local listeners (issue 14 regressions):

- SSRF: a URL whose host resolves to a forbidden address fails with a recorded reason and never
  reaches the address (the listener sees no connection); an allowed one is called at the pinned
  address with the host name kept in ``Host``.
- Isolation: one slow receiver (held open by the test) does not delay a call to another endpoint,
  and its own second call waits for its endpoint slot.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from imagegen_delivery.adapters.webhooks import PinnedHttpxSender, Resolver
from imagegen_runtime import ssrf

pytestmark = pytest.mark.unit
LOOPBACK = ssrf.AllowList.parse("127.0.0.0/8")


@dataclass
class Listener:
    """A minimal HTTP/1.1 server on 127.0.0.1 that records every connection and request and
    answers 200 once ``release`` is set."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if x)}
        await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(headers)
        self.received.set()
        await self.release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    yield await _listen(answer_at_once=True)


async def _listen(*, answer_at_once: bool) -> Listener:
    lst = Listener()
    if answer_at_once:
        lst.release.set()
    server = await asyncio.start_server(lst.handle, "127.0.0.1", 0)
    lst.port = server.sockets[0].getsockname()[1]
    _servers.append(server)
    return lst


_servers: list[asyncio.Server] = []


@pytest.fixture(autouse=True)
async def _close_servers() -> AsyncIterator[None]:
    yield
    for s in _servers:
        s.close()
    _servers.clear()


def dns(*answers: str) -> Resolver:
    """A resolver whose DNS answers ``answers``, checked as the real one checks them."""

    async def resolve(target: ssrf.Target, allow: ssrf.AllowList) -> ssrf.IPAddress:
        return ssrf.check_answers(target, list(answers), allow)

    return resolve


async def test_a_name_resolving_to_loopback_is_refused_and_never_reached(
    listener: Listener,
) -> None:
    sender = PinnedHttpxSender(resolver=dns("127.0.0.1"))
    result = await sender.send(f"http://hooks.example.test:{listener.port}/h", b"{}", {})
    await sender.close()
    assert result.forbidden and result.status is None
    assert "resolves to 127.0.0.1 is a loopback address" in result.error
    assert listener.connections == 0


async def test_one_forbidden_answer_among_public_ones_refuses(listener: Listener) -> None:
    sender = PinnedHttpxSender(resolver=dns("93.184.216.34", "127.0.0.1"))
    result = await sender.send(f"http://rebind.example.test:{listener.port}/h", b"{}", {})
    await sender.close()
    assert result.forbidden and listener.connections == 0


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "0x7f000001", "2130706433", "127.1", "[::ffff:127.0.0.1]", "localhost"]
)
async def test_loopback_in_any_notation_is_refused_without_a_connection(
    listener: Listener, host: str
) -> None:
    sender = PinnedHttpxSender()
    result = await sender.send(f"http://{host}:{listener.port}/metrics", b"{}", {})
    await sender.close()
    assert result.forbidden and listener.connections == 0, result


async def test_credentials_are_refused_even_on_the_allow_list(listener: Listener) -> None:
    sender = PinnedHttpxSender(allow=LOOPBACK)
    result = await sender.send(f"http://u:p@127.0.0.1:{listener.port}/h", b"{}", {})
    await sender.close()
    assert result.forbidden and "credentials" in result.error and listener.connections == 0


async def test_an_allowed_name_is_called_at_the_pinned_address_with_its_host_header(
    listener: Listener,
) -> None:
    sender = PinnedHttpxSender(allow=LOOPBACK, resolver=dns("127.0.0.1"))
    result = await sender.send(
        f"http://hooks.example.test:{listener.port}/h", b'{"a":1}', {"webhook-id": "m1"}
    )
    await sender.close()
    assert result.status == 200 and not result.forbidden
    [req] = listener.requests
    assert req["host"] == f"hooks.example.test:{listener.port}"
    assert req["webhook-id"] == "m1" and "authorization" not in req


async def test_a_slow_receiver_does_not_delay_another_endpoint() -> None:
    slow = await _listen(answer_at_once=False)  # answers only once the test releases it
    fast = await _listen(answer_at_once=True)
    # Two shared slots: the slow endpoint's queued second call must not hold the other one.
    sender = PinnedHttpxSender(allow=LOOPBACK, per_endpoint=1, max_in_flight=2, timeout_s=30)
    slow_url = f"http://127.0.0.1:{slow.port}/slow"
    first = asyncio.create_task(sender.send(slow_url, b"{}", {}))
    second = asyncio.create_task(sender.send(slow_url, b"{}", {}))
    await slow.received.wait()  # the first slow call is in the receiver, holding the slot

    result = await sender.send(f"http://127.0.0.1:{fast.port}/fast", b"{}", {})

    assert result.status == 200
    assert not slow.release.is_set() and not first.done()  # the fast call finished first
    assert slow.connections == 1  # the second slow call waits for its endpoint's slot
    slow.release.set()
    assert [(await first).status, (await second).status] == [200, 200]
    assert slow.connections == 2
    await sender.close()


async def test_a_receiver_that_never_answers_times_out_as_no_answer() -> None:
    silent = await _listen(answer_at_once=False)
    sender = PinnedHttpxSender(allow=LOOPBACK, timeout_s=0.2)
    result = await sender.send(f"http://127.0.0.1:{silent.port}/h", b"{}", {})
    silent.release.set()
    await sender.close()
    assert result.status is None and not result.forbidden
    assert result.error.startswith("no answer")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.example.test (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=hooks.example.test", "-addext", "subjectAltName=DNS:hooks.example.test",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_is_pinned_with_sni_and_the_certificate_checked_for_the_name(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    lst = Listener()
    lst.release.set()
    server = await asyncio.start_server(lst.handle, "127.0.0.1", 0, ssl=server_ctx)
    _servers.append(server)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    sender = PinnedHttpxSender(
        allow=LOOPBACK,
        resolver=dns("127.0.0.1"),
        transport=httpx.AsyncHTTPTransport(verify=client_ctx),
    )
    ok = await sender.send(f"https://hooks.example.test:{port}/h", b"{}", {})
    other = await sender.send(f"https://other.example.test:{port}/h", b"{}", {})
    await sender.close()
    assert ok.status == 200 and names[0] == "hooks.example.test"
    assert lst.requests[0]["host"] == f"hooks.example.test:{port}"
    # The certificate does not name other.example.test: refused although the address is the same.
    assert other.status is None and "no answer" in other.error and len(lst.requests) == 1
