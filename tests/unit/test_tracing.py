"""Tracing set-up by the OTEL_* variables, and the trace context carried by publishes (ADR 0800).

Spans are exported for real (BatchSpanProcessor + OTLP/HTTP exporter) to the in-process
receiver of ``tests/support/otlp.py``: what a collector would get.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from imagegen_runtime import tracing
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_runtime.tracing import (
    JOB_ID,
    TracingConfigError,
    build_provider,
    chosen_exporters,
    consumer_span,
    trace_id_of,
)
from imagegen_schemas import header_map
from imagegen_schemas.jobs import CancellationRequested
from tests.support.otlp import Exported, OtlpReceiver, exporting_to

pytestmark = pytest.mark.unit

OTEL_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in {*OTEL_VARS, *(k for k in os.environ if k.startswith("OTEL_"))}:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def exported(receiver: OtlpReceiver) -> Iterator[Exported]:
    with exporting_to(receiver) as e:
        yield e


# ---- which exporters ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "setting", "expected"),
    [
        ({}, "none", []),
        ({}, "console", ["console"]),
        ({}, "otlp", ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "none", ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "none", ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, "none", ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "none", ["otlp", "console"]),
        # OTEL_TRACES_EXPORTER wins over an endpoint and over the service's setting
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, "otlp", []),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "otlp", ["otlp"]),
    ],
)
def test_exporters_follow_the_otel_variables(
    env: dict[str, str], setting: str, expected: list[str]
) -> None:
    assert chosen_exporters(setting, env) == expected


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_variable(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(TracingConfigError, match=named):
        chosen_exporters("none", env)


# ---- the provider the environment asks for ----------------------------------------------------
def test_otlp_endpoint_sends_spans_named_after_the_service(
    clean_env: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
    provider, names = build_provider("scheduler")
    assert names == ["otlp"]
    assert provider.resource.attributes["deployment.environment"] == "ci"
    marker = uuid.uuid4().hex
    with provider.get_tracer("t").start_as_current_span(f"work {marker}"):
        pass
    provider.shutdown()  # flushes the batch, as a service's on_shutdown does
    [span] = receiver.wait_for(lambda r: r.find(lambda s: s.name == f"work {marker}"), 10)
    assert span.service == "imagegen-scheduler"


def test_otel_service_name_and_sampler_come_from_the_environment(
    clean_env: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.traces_endpoint)
    clean_env.setenv("OTEL_SERVICE_NAME", "imagegen-api-canary")
    clean_env.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    clean_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    provider, _ = build_provider("api")
    assert "0.25" in provider.sampler.get_description()
    provider.shutdown()
    clean_env.setenv("OTEL_TRACES_SAMPLER", "always_on")
    provider, _ = build_provider("api")
    marker = uuid.uuid4().hex
    with provider.get_tracer("t").start_as_current_span(f"named {marker}"):
        pass
    provider.shutdown()
    [span] = receiver.wait_for(lambda r: r.find(lambda s: s.name == f"named {marker}"), 10)
    assert span.service == "imagegen-api-canary"


def test_no_exporter_configured_sends_nothing_but_keeps_trace_ids(
    clean_env: pytest.MonkeyPatch,
) -> None:
    provider, names = build_provider("safety")
    assert names == []
    with provider.get_tracer("t").start_as_current_span("x") as span:
        assert span.get_span_context().is_valid  # traceparent still flows between services


# ---- context carried by publishes and consumes --------------------------------------------------
async def test_a_publish_inside_a_span_is_a_producer_child_and_carries_it(
    exported: Exported, receiver: OtlpReceiver
) -> None:
    pub = InMemoryPublisher("test")
    job = str(uuid.uuid4())
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("handler", attributes={JOB_ID: job}) as root:
        with tracer.start_as_current_span("inner"):
            pass  # inherits the job id from its parent (JobIdProcessor)
        await pub.publish(CancellationRequested(job_id=job, requested_by="a"), key=job)
        await pub.publish(CancellationRequested(job_id=job, requested_by="b"), key=job)
    root_ctx = root.get_span_context()
    exported.flush()
    spans = receiver.wait_for(
        lambda r: len(r.trace(f"{root_ctx.trace_id:032x}")) >= 4
        and r.trace(f"{root_ctx.trace_id:032x}"),
        10,
    )
    by_name = {s.name: s for s in spans}
    producers = [s for s in spans if s.kind == "PRODUCER"]
    assert len(producers) == 2, spans
    root_id = f"{root_ctx.span_id:016x}"
    headers = [header_map(r.headers) for r in pub.records]
    # each record carries its own producer span, child of the handler's span
    assert sorted(h["traceparent"].split("-")[2] for h in headers) == sorted(
        p.span_id for p in producers
    )
    for p in producers:
        assert p.parent_id == root_id
        assert p.name == f"publish {CancellationRequested.event_type}"
        assert p.attributes["messaging.system"] == "kafka"
        assert p.attributes["messaging.destination.name"] == pub.records[0].topic
        assert p.attributes[JOB_ID] == job
        assert p.attributes["messaging.message.id"] in {r.envelope.event_id for r in pub.records}
    assert by_name["inner"].job_id == job


async def test_a_publish_outside_any_span_continues_the_jobs_latest_consumed_span(
    exported: Exported, receiver: OtlpReceiver
) -> None:
    """The scheduler's decisions are published after a batch or on a timer, outside the
    consume span: they must still join the job's trace."""
    job = str(uuid.uuid4())
    upstream = InMemoryPublisher("api")
    with trace.get_tracer("test").start_as_current_span("POST") as root:
        await upstream.publish(CancellationRequested(job_id=job, requested_by="x"), key=job)
    incoming = header_map(upstream.records[0].headers)
    with consumer_span(incoming, job, {"cloudevents.event_type": "t"}) as consumed:
        assert consumed is not None
    assert not trace.get_current_span().get_span_context().is_valid  # outside any span now
    later = InMemoryPublisher("scheduler")
    await later.publish(CancellationRequested(job_id=job, requested_by="y"), key=job)
    carried = header_map(later.records[0].headers)["traceparent"]
    assert trace_id_of(carried) == f"{root.get_span_context().trace_id:032x}"
    exported.flush()
    trace_id = trace_id_of(carried)
    assert trace_id is not None
    spans = receiver.wait_for(lambda r: len(r.trace(trace_id)) >= 4 and r.trace(trace_id), 10)
    consume = next(s for s in spans if s.kind == "CONSUMER")
    decision = next(s for s in spans if s.kind == "PRODUCER" and s.span_id == carried.split("-")[2])
    assert decision.parent_id == consume.span_id
    assert consume.job_id == decision.job_id == job


def test_a_record_of_no_job_and_no_trace_gets_no_span() -> None:
    with consumer_span({}, None, {"cloudevents.event_type": "heartbeat"}) as span:
        assert span is None


def test_a_replayed_record_gets_no_span_but_its_trace_is_remembered() -> None:
    job = str(uuid.uuid4())
    tp = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    with consumer_span({"traceparent": tp}, job, {}, live=False) as span:
        assert span is None
    ctx = tracing.parent_for(job)
    assert ctx is not None
    got = trace.get_current_span(ctx).get_span_context()
    assert f"{got.trace_id:032x}" == tp.split("-")[1]


def test_trace_id_of_reads_a_traceparent_and_refuses_other_text() -> None:
    tid = uuid.uuid4().hex
    assert trace_id_of(f"00-{tid}-{'1' * 16}-01") == tid
    assert trace_id_of("garbage") is None
    assert trace_id_of(None) is None


def test_the_local_stack_passes_otel_variables_but_one_service_name(
    clean_env: pytest.MonkeyPatch,
) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
    import stack  # deploy/stack.py

    clean_env.delenv("IMAGEGEN_STACK_OTEL_ENDPOINT", raising=False)
    assert stack.otel_env() == {}
    clean_env.setenv("IMAGEGEN_STACK_OTEL_ENDPOINT", "http://127.0.0.1:24318")
    clean_env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    clean_env.setenv("OTEL_SERVICE_NAME", "one-name-for-all")
    assert stack.otel_env() == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:24318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    }


async def test_a_heartbeat_outside_any_span_carries_no_trace_but_one_inside_a_span_does(
    exported: Exported,
) -> None:
    """Periodic facts of no job would each start a trace (and a consumer span per consumer)."""
    from imagegen_schemas.workers import ModelEvicted

    pub = InMemoryPublisher("gpu-worker")
    fact = ModelEvicted(worker_id="w1", model_id="m", reason="make_room")
    await pub.publish(fact, key="w1")
    with trace.get_tracer("test").start_as_current_span("run of a job") as run:
        await pub.publish(fact, key="w1")
    outside, inside = (header_map(r.headers) for r in pub.records)
    assert "traceparent" not in outside
    assert trace_id_of(inside["traceparent"]) == f"{run.get_span_context().trace_id:032x}"
