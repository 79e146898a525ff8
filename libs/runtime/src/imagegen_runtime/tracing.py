"""OpenTelemetry tracing: one trace per job, its context carried in Kafka headers (ADR 0800).

Set-up (:func:`configure_tracing`, once per process, from ``run_main``) follows the standard
``OTEL_*`` variables, read by the SDK itself where it reads them:
- exporters: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``, comma-separated), else
  OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
  set, else the service's ``IMAGEGEN_<SERVICE>_TRACE_EXPORTER`` (default ``none``). OTLP goes
  through a ``BatchSpanProcessor`` (``OTEL_BSP_*``) to the OTLP/HTTP protobuf exporter, which
  reads its endpoint, headers, timeout and compression from ``OTEL_EXPORTER_OTLP_*``;
- resource: ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``; the service name defaults to
  ``imagegen-<service>``;
- sampling: ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (the SDK's default,
  ``parentbased_always_on``, when unset): consumers continue the sampling decision carried in
  ``traceparent``, so a job's trace is kept or dropped whole;
- ``OTEL_SDK_DISABLED=true``: no provider at all (no spans, no ``traceparent``).

Spans of a job (names in docs/tracing.md): the API's ``POST /v1/generations`` server span is the
root; each publish of a job's event (or inside a span) is a ``publish <type>`` PRODUCER span
whose context is the record's ``traceparent``; each consumed record of a job is a
``consume <type>`` CONSUMER span continuing it; the work itself (model load, denoise, safety
checks, upload, webhook) are INTERNAL spans inside those. Every span of a job carries
``imagegen.job_id``: set where the job is known, and copied from parent to child inside a
process (:class:`JobIdProcessor`).

Work that runs outside any span but for a job (the scheduler's decisions after a batch or on
its timer, a webhook attempt on the dispatcher's timer) continues the latest span this process
consumed for that job (:func:`parent_for`), so the trace does not break there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import INVALID_SPAN, SpanContext, SpanKind

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

JOB_ID = "imagegen.job_id"  # the attribute every span of a job carries
EXPORTERS = ("otlp", "console", "none")
# Paths whose requests get no server span: probes and scrapes, polled all day.
EXCLUDED_URLS = "/healthz$,/readyz$,/metrics$"

tracer = trace.get_tracer("imagegen")

_lock = threading.Lock()
_provider: TracerProvider | None = None
# Whether the configured provider sends spans anywhere; None until configure_tracing ran (a test
# that installs its own provider gets every span). With no exporter, the spans that only exist
# to be looked at (HTTP server, SQL) are not made: at admission rates they cost a tenth of the
# API's CPU (ADR 0800). Producer, consumer and work spans stay: they carry `traceparent`.
_exported: bool | None = None


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable this service cannot honour; the message names it."""


def chosen_exporters(setting: str = "none", environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for, in order, without ``none``.

    ``OTEL_TRACES_EXPORTER`` wins; else an OTLP endpoint variable means ``otlp``; else the
    service's own ``TRACE_EXPORTER`` setting (``setting``). Raises TracingConfigError naming the
    variable for a value this service cannot honour (an unknown exporter, a protocol other than
    http/protobuf).
    """
    env = os.environ if environ is None else environ
    listed = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if listed:
        names = [n.strip().lower() for n in listed.split(",") if n.strip()]
        bad = [n for n in names if n not in EXPORTERS]
        if bad:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={listed!r}: unknown exporter {bad[0]!r} "
                f"(this service has {', '.join(EXPORTERS)})"
            )
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        names = ["otlp"]
    else:
        names = [setting]
    if setting not in EXPORTERS:
        raise TracingConfigError(f"trace exporter {setting!r}: expected one of {EXPORTERS}")
    chosen = [n for n in dict.fromkeys(names) if n != "none"]
    if "otlp" in chosen:
        for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(var, "").strip()
            if protocol and protocol != "http/protobuf":
                raise TracingConfigError(
                    f"{var}={protocol!r}: only http/protobuf is installed (OTLP over HTTP)"
                )
            if protocol:
                break
    return chosen


def service_name(service: str) -> str:
    """``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``), else
    ``imagegen-<service>``."""
    found = OTELResourceDetector().detect().attributes.get("service.name")
    return str(found) if found else f"imagegen-{service}"


def build_provider(service: str, exporter: str = "none") -> tuple[TracerProvider, list[str]]:
    """A tracer provider for ``service`` as the environment asks (see the module docstring),
    and the names of the exporters it got. Installs nothing."""
    names = chosen_exporters(exporter)
    # The sampler comes from OTEL_TRACES_SAMPLER through the SDK (sampler=None).
    provider = TracerProvider(resource=Resource.create({"service.name": service_name(service)}))
    provider.add_span_processor(JobIdProcessor())
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            otlp: SpanExporter = OTLPSpanExporter()  # endpoint etc. from OTEL_EXPORTER_OTLP_*
            provider.add_span_processor(BatchSpanProcessor(otlp))
        elif name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    return provider, names


def configure_tracing(service: str, exporter: str = "none") -> list[str]:
    """Install the tracer provider for ``service`` once per process (later calls do nothing)
    and, when spans go anywhere, instrument httpx. Returns the exporters chosen.

    Raises TracingConfigError naming the variable when the environment asks for what this
    service cannot do. With ``OTEL_SDK_DISABLED=true`` nothing is installed.
    """
    global _provider, _exported
    with _lock:
        if _provider is not None:
            return []
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            _exported = False
            return []
        provider, names = build_provider(service, exporter)
        trace.set_tracer_provider(provider)
        _provider = provider
        _exported = bool(names)
    if names:
        instrument_httpx()
    name = service_name(service)
    log.info("tracing configured", extra={"exporters": names, "service_name": name})
    return names


def spans_exported() -> bool:
    """False when :func:`configure_tracing` chose no exporter: then HTTP server and SQL spans,
    which only exist to be exported, are not made (:func:`instrument_http_app`,
    :func:`instrument_engine`). True before it ran (a provider installed by a test)."""
    return _exported is not False


def shutdown_tracing() -> None:
    """Export what is still buffered and stop the exporters (a service's last step)."""
    global _provider, _exported
    with _lock:
        provider, _provider = _provider, None
        _exported = None
    if provider is not None:
        provider.shutdown()


async def shutdown_tracing_async() -> None:
    """:func:`shutdown_tracing` off the event loop (an ``on_shutdown`` hook)."""
    import asyncio

    await asyncio.to_thread(shutdown_tracing)


class JobIdProcessor(SpanProcessor):
    """Copies ``imagegen.job_id`` from a span's parent (in this process) to the span, so SQL,
    HTTP and work spans under a job's span carry it without being told."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.attributes and JOB_ID in span.attributes:
            return
        parent = trace.get_current_span(parent_context)
        attributes = getattr(parent, "attributes", None)
        if attributes and JOB_ID in attributes:
            span.set_attribute(JOB_ID, attributes[JOB_ID])

    def on_end(self, span: ReadableSpan) -> None:
        pass


# ---- the latest span of each job seen by this process ------------------------------------------
class JobContexts:
    """Job id -> the latest span context this process consumed for it (bounded, least recently
    used first out). Holds a ``traceparent`` string for records only folded (a replay), parsed
    when used."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._items: OrderedDict[str, SpanContext | str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, job_id: str, where: SpanContext | str) -> None:
        if isinstance(where, SpanContext) and not where.is_valid:
            return
        with self._lock:
            self._items[job_id] = where
            self._items.move_to_end(job_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def context(self, job_id: str) -> Context | None:
        """A context whose current span is the job's latest, or None."""
        with self._lock:
            where = self._items.get(job_id)
        if where is None:
            return None
        if isinstance(where, str):
            ctx = propagate.extract({"traceparent": where})
            return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None
        return trace.set_span_in_context(trace.NonRecordingSpan(where))

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._items.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._items)


JOBS = JobContexts()


def parent_for(job_id: str | None) -> Context | None:
    """The parent of a new span of ``job_id``: None (the current context) when a span is
    active, else the latest span of the job this process consumed, else None (a new trace)."""
    if trace.get_current_span().get_span_context().is_valid or not job_id:
        return None
    return JOBS.context(job_id)


@contextmanager
def job_span(
    name: str,
    job_id: str | None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """A span of ``job_id``'s work, current inside the block: a child of the active span, or
    of the job's latest consumed span when none is active (see :func:`parent_for`)."""
    attrs = dict(attributes or {})
    if job_id:
        attrs[JOB_ID] = job_id
    with tracer.start_as_current_span(
        name, context=parent_for(job_id), kind=kind, attributes=attrs
    ) as span:
        yield span


def tag_job(job_id: str) -> None:
    """Name ``job_id`` on the active span (e.g. the API's request span, once it has the id)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(JOB_ID, job_id)


# ---- Kafka ---------------------------------------------------------------------------------------
def messaging_attributes(
    topic: str,
    *,
    event_type: str,
    event_id: str | None = None,
    key: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """OpenTelemetry messaging attributes of one Kafka record."""
    attrs: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "cloudevents.event_type": event_type,
    }
    if event_id:
        attrs["messaging.message.id"] = event_id
        attrs["cloudevents.event_id"] = event_id
    if key:
        attrs["messaging.kafka.message.key"] = key
    if partition is not None and partition >= 0:
        attrs["messaging.destination.partition.id"] = str(partition)
    if offset is not None and offset >= 0:
        attrs["messaging.kafka.offset"] = offset
    if group:
        attrs["messaging.consumer.group.name"] = group
    return attrs


@contextmanager
def producer_span(
    topic: str, event_type: str, key: str, job_id: str | None
) -> Iterator[trace.Span]:
    """``publish <type>``, kind PRODUCER: a record built inside carries its ``traceparent``."""
    attrs = messaging_attributes(topic, event_type=event_type, key=key)
    attrs["messaging.operation.type"] = "send"
    attrs["messaging.operation.name"] = "publish"
    with job_span(f"publish {event_type}", job_id, kind=SpanKind.PRODUCER, attributes=attrs) as s:
        yield s


@contextmanager
def consumer_span(
    headers: Mapping[str, str],
    job_id: str | None,
    attributes: Mapping[str, Any],
    *,
    live: bool = True,
) -> Iterator[trace.Span | None]:
    """``consume <type>``, kind CONSUMER, continuing the record's ``traceparent``; remembered as
    the job's latest span (:data:`JOBS`).

    No span for a record that carries no trace and belongs to no job (heartbeats): those would
    each start a trace of their own. ``live=False`` (a replay that only folds the record): no
    span either, but the record's trace is remembered for the job, so work decided later for
    it continues that trace.
    """
    traceparent = headers.get("traceparent")
    if not live or (not traceparent and not job_id):
        if job_id and traceparent:
            JOBS.remember(job_id, traceparent)
        yield None
        return
    attrs = dict(attributes)
    attrs["messaging.operation.type"] = "process"
    attrs["messaging.operation.name"] = "consume"
    if job_id:
        attrs[JOB_ID] = job_id
    parent = propagate.extract(dict(headers)) if traceparent else Context()
    with tracer.start_as_current_span(
        f"consume {attrs.get('cloudevents.event_type', '?')}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attrs,
    ) as span:
        if job_id:
            JOBS.remember(job_id, span.get_span_context())
        yield span


def current_traceparent() -> str | None:
    """The active span's ``traceparent`` header value, or None outside a span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """An OpenTelemetry context continuing the trace named in Kafka headers."""
    return propagate.extract(dict(headers))


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a W3C ``traceparent`` value, or None when it is not one."""
    if not traceparent:
        return None
    span = trace.get_current_span(propagate.extract({"traceparent": traceparent}))
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


# ---- instrumentation -----------------------------------------------------------------------------
# FastAPI (>= 0.160) traces, meters and logs every request itself through the global OpenTelemetry
# providers unless told not to. Our server spans come from ``instrument_http_app`` (one source,
# probes left out, only when exported) and our HTTP metrics from Prometheus, so every app turns
# FastAPI's own telemetry off: it made a second span and an operation span per dependency on
# every request, exported or not (about a sixth of the API's CPU per POST; ADR 0641).
FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


def instrument_http_app(app: FastAPI) -> None:
    """Server spans for ``app``'s requests (``<METHOD> <route>``), probes and scrapes left out;
    the ASGI send/receive sub-spans are left out too. Nothing when no span is exported."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    if not spans_exported() or getattr(app, "_is_instrumented_by_opentelemetry", False):
        return
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )


def _origin_only(span: trace.Span, request: Any) -> None:
    """httpx spans name the origin only: a webhook URL's path or query may hold a secret."""
    url = getattr(request, "url", None)
    if url is None or not span.is_recording():
        return
    netloc = url.netloc.decode() if isinstance(url.netloc, bytes) else url.netloc
    origin = f"{url.scheme}://{netloc}"
    for key in ("url.full", "http.url"):
        if key in (getattr(span, "attributes", None) or {}):
            span.set_attribute(key, origin)


async def _origin_only_async(span: trace.Span, request: Any) -> None:
    _origin_only(span, request)


def instrument_httpx() -> None:
    """Client spans (and ``traceparent`` on the request) for every httpx call of the process."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(request_hook=_origin_only, async_request_hook=_origin_only_async)


class _ChildSpansOnly:
    """A tracer whose spans exist only inside another span: a query run by no traced work (a
    readiness ping, a timer's poll) would otherwise start a trace of its own."""

    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(self, name: str, context: Context | None = None, **kw: Any) -> trace.Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return INVALID_SPAN
        return self._inner.start_span(name, context=context, **kw)


class _NoUsage:
    """The connection-usage counter EngineTracer updates (metrics are Prometheus's here)."""

    def add(self, value: int, attributes: Mapping[str, Any] | None = None) -> None:
        pass


def instrument_engine(engine: AsyncEngine) -> None:
    """Client spans for ``engine``'s statements (``SELECT imagegen`` ...), inside traced work
    only (:class:`_ChildSpansOnly`). Nothing when no span is exported."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    if not spans_exported():
        return

    sql_tracer = trace.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    EngineTracer(  # type: ignore[no-untyped-call]
        _ChildSpansOnly(sql_tracer), engine.sync_engine, _NoUsage()
    )
