"""An in-process OTLP/HTTP trace receiver for tests.

    with OtlpReceiver() as receiver:            # 127.0.0.1, a free port (or ``port=``)
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...
        spans = receiver.wait_for(lambda r: r.trace(trace_id) if len(r.trace(trace_id)) > 3
                                  else None, timeout=10)

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` (what the
OTLP/HTTP exporter sends; gzip or not), keeps every span it decodes (service name, name, ids,
kind, attributes, events, times) grouped by trace, and answers 200 with an empty
``ExportTraceServiceResponse``. :meth:`OtlpReceiver.wait_for` waits on a condition variable
notified by each request, not on a timer. Anything else gets 404 (wrong path) or 400 (bytes
that are not a request), counted in :attr:`OtlpReceiver.rejected`.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

T = TypeVar("T")

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str | None  # 16 hex digits; None for a root span
    kind: str  # SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL
    attributes: dict[str, Any]
    start_ns: int  # unix nanoseconds
    end_ns: int
    events: tuple[str, ...]  # event names, in order
    status: str  # UNSET, OK, ERROR

    @property
    def job_id(self) -> str | None:
        value = self.attributes.get("imagegen.job_id")
        return str(value) if value is not None else None


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    return getattr(v, which)


def _attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest`` (raises DecodeError on other bytes)."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for rs in request.resource_spans:
        service = str(_attributes(rs.resource.attributes).get("service.name", ""))
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        service=service,
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None,
                        kind=KINDS.get(s.kind, str(s.kind)),
                        attributes=_attributes(s.attributes),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        events=tuple(e.name for e in s.events),
                        status={0: "UNSET", 1: "OK", 2: "ERROR"}.get(s.status.code, "?"),
                    )
                )
    return spans


class OtlpReceiver:
    """A small OTLP/HTTP server on 127.0.0.1 in a thread; see the module docstring.

    ``max_traces`` bounds what it keeps (the oldest traces go first), for a receiver that a
    whole stack exports to for a long session.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_traces: int = 20_000) -> None:
        self.max_traces = max_traces
        self._cond = threading.Condition(threading.RLock())
        self._traces: OrderedDict[str, list[ReceivedSpan]] = OrderedDict()
        self.requests = 0  # export requests accepted
        self.rejected = 0  # requests answered 400/404
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path.split("?", 1)[0] != "/v1/traces":
                    receiver._reject()
                    self.send_error(404, "only /v1/traces")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    spans = decode(body)
                except (DecodeError, OSError, zlib.error) as exc:
                    receiver._reject()
                    self.send_error(400, f"not an ExportTraceServiceRequest: {exc}")
                    return
                receiver._add(spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: tests read what was received, not an access log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL, for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_endpoint(self) -> str:
        """The full URL, for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or an exporter's endpoint."""
        return self.endpoint + "/v1/traces"

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what was received ----
    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._cond:
            for span in spans:
                self._traces.setdefault(span.trace_id, []).append(span)
                self._traces.move_to_end(span.trace_id)
            while len(self._traces) > self.max_traces:
                self._traces.popitem(last=False)
            self.requests += 1
            self._cond.notify_all()

    def _reject(self) -> None:
        with self._cond:
            self.rejected += 1
            self._cond.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span kept, trace by trace (oldest trace first), in arrival order."""
        with self._cond:
            return [s for spans in self._traces.values() for s in spans]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace, in arrival order."""
        with self._cond:
            return list(self._traces.get(trace_id, ()))

    def find(self, predicate: Callable[[ReceivedSpan], bool]) -> list[ReceivedSpan]:
        with self._cond:
            return [s for spans in self._traces.values() for s in spans if predicate(s)]

    def clear(self) -> None:
        with self._cond:
            self._traces.clear()

    def wait_for(self, predicate: Callable[[OtlpReceiver], T], timeout: float = 10.0) -> T:
        """Wait until ``predicate(self)`` is truthy (checked now and after every request) and
        return its value; TimeoutError after ``timeout`` seconds, saying what was received."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self)
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({f"{s.service}:{s.name}" for s in self.spans})
                    raise TimeoutError(
                        f"condition not met within {timeout:.0f}s; {self.requests} requests, "
                        f"{len(self.spans)} spans received: {names[:40]}"
                    )
                self._cond.wait(left)


def render_tree(spans: list[ReceivedSpan]) -> str:
    """The spans of one trace as an indented tree (children by start time), one line each:
    ``+<ms from the root's start> <duration ms> <service> <kind> <name> [job id]``."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[ReceivedSpan]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in by_id else None
        children.setdefault(parent, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: s.start_ns)
    roots = children.get(None, [])
    t0 = min((s.start_ns for s in spans), default=0)
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        orphan = " (parent not received)" if depth == 0 and span.parent_id else ""
        at_ms, took_ms = (span.start_ns - t0) / 1e6, (span.end_ns - span.start_ns) / 1e6
        lines.append(
            f"{'  ' * depth}+{at_ms:9.1f}ms {took_ms:8.1f}ms "
            f"{span.service:<22} {span.kind:<8} {span.name}"
            + (f"  [job {span.job_id}]" if span.job_id else "")
            + orphan
        )
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)


class _Switch(SpanProcessor):
    """A span processor that can be switched off (an SDK provider cannot remove one)."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.on = True

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.on:
            self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.on = False
        self.inner.shutdown()


@contextmanager
def exporting_to(receiver: OtlpReceiver, service: str = "imagegen-test") -> Iterator[Exported]:
    """This process's spans go to ``receiver`` over real OTLP/HTTP (a BatchSpanProcessor and
    the OTLP exporter, as in a service) while the block runs.

    The process's global tracer provider is installed once (an SDK provider named
    ``service``, with the runtime's job-id processor) when none is; ``flush()`` on the value
    yielded pushes what is buffered."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from imagegen_runtime.tracing import JobIdProcessor

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        installed = TracerProvider(resource=Resource.create({"service.name": service}))
        installed.add_span_processor(JobIdProcessor())
        trace.set_tracer_provider(installed)
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider), "another provider was installed first"
    switch = _Switch(BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.traces_endpoint)))
    provider.add_span_processor(switch)
    try:
        yield Exported(provider, switch)
    finally:
        switch.force_flush()
        switch.shutdown()


@dataclass
class Exported:
    provider: TracerProvider
    switch: _Switch

    @property
    def service(self) -> str:
        return str(self.provider.resource.attributes.get("service.name", ""))

    def flush(self) -> None:
        assert self.switch.force_flush(10_000), "spans not exported within 10 s"
