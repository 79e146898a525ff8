"""The harness's webhook receiver: verifies every call as a Standard Webhooks receiver would
(docs/adr/0403), records it (webhook-id, job, type, signature), and fails a seeded share of calls
with 503, so delivery's retries (with the same webhook-id) are exercised.

Each user's jobs name ``<base>/<user id>`` as their webhook URL, so the receiver knows whose
``whsec_`` secrets (from ``imagegen webhooks secret --user U``) must have signed the call: a call
signed with another user's secret does not verify.

Its address is configurable (``--webhook-host``, ``--webhook-url``): should delivery refuse
loopback URLs, bind it to another interface and give jobs that address.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .history import WebhookCall

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def verify(secrets: Sequence[str], body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether one of ``secrets`` signed ``body`` with these headers (id, timestamp within the
    library's 5-minute tolerance, a matching ``v1,`` signature)."""
    for secret in secrets:
        try:
            Webhook(secret).verify(body, dict(headers), json_parse=False)
        except (WebhookVerificationError, ValueError):  # ValueError: malformed base64 / v1 pair
            continue
        return True
    return False


def user_of(path: str) -> str | None:
    """The user id a webhook URL's path ends with (``<base path>/<user>``); None for ``/``."""
    parts = [p for p in urlsplit(path).path.split("/") if p]
    return unquote(parts[-1]) if parts else None


class WebhookReceiver:
    def __init__(
        self,
        host: str,
        port: int,
        secrets: Mapping[str, Sequence[str]],
        fail_share: float,
        seed: int,
    ) -> None:
        """``secrets``: user id -> that user's whsec_ secrets."""
        self.calls: list[WebhookCall] = []
        self._secrets = {u: tuple(s) for u, s in secrets.items()}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {h: v for h in HEADERS if (v := self.headers.get(h)) is not None}
                status = receiver.record(user_of(self.path), body, headers)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._fail_share = fail_share
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def record(self, user: str | None, body: bytes, headers: Mapping[str, str]) -> int:
        """Verify and record one call; returns the status to answer."""
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = {}
        known = self._secrets.get(user) if user is not None else None
        ok = verify(known, body, headers) if known else None

        def text(key: str) -> str | None:
            v = doc.get(key)
            return None if v is None else str(v)

        with self._lock:
            status = 503 if self._rng.random() < self._fail_share else 200
            self.calls.append(
                WebhookCall(
                    at=time.time(),
                    job_id=text("job_id"),
                    webhook_id=headers.get("webhook-id"),
                    body_event_id=text("event_id"),
                    type=text("type"),
                    signature_ok=ok,
                    answered=status,
                    user_id=user,
                )
            )
        return status

    def acknowledged(self) -> set[str]:
        """Job ids with a verified call this receiver answered 2xx."""
        with self._lock:
            return {
                c.job_id
                for c in self.calls
                if c.job_id and c.signature_ok and 200 <= c.answered < 300
            }

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
