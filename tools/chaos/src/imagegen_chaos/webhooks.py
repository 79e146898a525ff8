"""The harness's webhook receiver: records every call (event id, job, signature) and fails a
seeded share of them with 503, so delivery's retries (with the same event id) are exercised.

Its address is configurable (``--webhook-host``, ``--webhook-url``): should delivery refuse
loopback URLs, bind it to another interface and give jobs that address.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from imagegen_delivery.domain.webhook import (  # type: ignore[import-untyped]
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    derive_webhook_key,
    verify_signature_header,
)

from .history import WebhookCall


class WebhookReceiver:
    def __init__(
        self, host: str, port: int, signing_key: bytes | None, fail_share: float, seed: int
    ) -> None:
        self.calls: list[WebhookCall] = []
        self._key = derive_webhook_key(signing_key) if signing_key else None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._record(
                    body,
                    self.headers.get(EVENT_ID_HEADER),
                    self.headers.get(SIGNATURE_HEADER),
                    self,
                )

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._fail_share = fail_share
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _record(
        self, body: bytes, event_id: str | None, signature: str | None, h: BaseHTTPRequestHandler
    ) -> None:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        ok = None
        if self._key is not None:
            ok = signature is not None and verify_signature_header(body, signature, self._key)
        with self._lock:
            status = 503 if self._rng.random() < self._fail_share else 200
            self.calls.append(
                WebhookCall(
                    time.time(), doc.get("job_id"), event_id, doc.get("event_id"), ok, status
                )
            )
        h.send_response(status)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
