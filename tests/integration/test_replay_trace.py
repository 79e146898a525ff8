"""`imagegen replay --job ID` names the job's trace (issue 15 item 6), against the real broker.

The trace id comes from the ``traceparent`` of the job's first event; events that do not carry
it are listed. The trace printed is the one the spans were exported under.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from imagegen.cli import main
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_schemas.jobs import CancellationRequested
from tests.support.otlp import OtlpReceiver, exporting_to

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


async def test_replay_job_prints_the_trace_id_of_its_first_event(
    infra, topics, receiver: OtlpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    job = str(uuid.uuid4())
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    with exporting_to(receiver) as exported:
        try:
            with trace.get_tracer("test").start_as_current_span("POST /v1/generations") as root:
                await pub.publish(CancellationRequested(job_id=job, requested_by="a"), key=job)
            # a later event published by no traced work of this job: a trace of its own
            await pub.publish(CancellationRequested(job_id=job, requested_by="b"), key=job)
        finally:
            await pub.close()
        exported.flush()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    exported_spans = receiver.wait_for(lambda r: r.trace(trace_id), 10)
    assert {s.trace_id for s in exported_spans} == {trace_id}

    code = main(["replay", "--job", job, "--bootstrap", infra.kafka_bootstrap, "--prefix", topics])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        f"trace: {trace_id} (from the traceparent of {CancellationRequested.event_type};"
        " 1 of 2 events in it)"
    ), out
    assert lines[1].startswith(f"  not in it: {CancellationRequested.event_type} ")
    other = lines[1].rsplit(": trace ", 1)[1]
    assert len(other) == 32 and other != trace_id, out
    assert sum(CancellationRequested.event_type in line for line in lines[2:]) == 2  # timeline


def test_replay_job_of_an_unknown_job_says_so(infra, topics, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(
        [
            "replay",
            "--job",
            str(uuid.uuid4()),
            "--bootstrap",
            infra.kafka_bootstrap,
            "--prefix",
            topics,
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == "no events for this job"
