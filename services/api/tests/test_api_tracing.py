"""The API's request span is the root of the job's trace, and JobRequested carries it (ADR 0800).

The real routes on the in-memory fakes, instrumented as ``run_main`` instruments the service;
spans exported over OTLP/HTTP to the in-process receiver.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from api_testkit import make_app, make_deps

from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_runtime.tracing import JOB_ID, instrument_http_app, trace_id_of
from imagegen_schemas import Plan, header_map
from tests.support.otlp import OtlpReceiver, exporting_to

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


async def test_job_requested_carries_the_trace_of_the_post(receiver: OtlpReceiver) -> None:
    deps = make_deps()
    key = await deps.accounts.create_key("alice", Plan.PRO)
    app = make_app(deps)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    instrument_http_app(app)
    transport = httpx.ASGITransport(app=app)
    with exporting_to(receiver) as exported:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            assert (await client.get("/healthz")).status_code == 200
            r = await client.post(
                "/v1/generations",
                json={"prompt": "a red circle", "steps": 2},
                headers={"Authorization": f"Bearer {key}"},
            )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        exported.flush()
        assert isinstance(deps.publisher, InMemoryPublisher)
        [record] = deps.publisher.records
        traceparent = header_map(record.headers)["traceparent"]
        trace_id = trace_id_of(traceparent)
        assert trace_id is not None
        spans = receiver.wait_for(
            lambda rc: (
                rc.trace(trace_id)
                if any(s.kind == "SERVER" for s in rc.trace(trace_id))
                and any(s.kind == "PRODUCER" for s in rc.trace(trace_id))
                else None
            ),
            10,
        )
    [server] = [s for s in spans if s.kind == "SERVER"]
    [producer] = [s for s in spans if s.kind == "PRODUCER"]
    assert server.name == "POST /v1/generations"
    assert server.parent_id is None  # the root of the job's trace
    assert server.attributes[JOB_ID] == job_id
    assert producer.parent_id == server.span_id
    assert producer.attributes[JOB_ID] == job_id
    assert traceparent.split("-")[2] == producer.span_id  # the record carries the publish span
    # probes get no span
    assert not receiver.find(lambda s: s.name.endswith("/healthz"))
