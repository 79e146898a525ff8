"""One trace per job across the whole stack (issue 15 item 1, ADR 0800).

The stack exports every service's spans over OTLP/HTTP to the session's in-process receiver
(``stack.otlp``, started by the ``stack`` fixture before ``stack.py up``). One job, with a
webhook, is submitted and delivered; then its trace must hold spans of all six services under
one trace id, rooted at the API's POST span, in causal order, each naming the job. The span
tree is written to ``out/trace-<job>.txt`` (and printed) for the docs.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagegen_schemas.jobs import GenerationRequested, ImageGenerated, JobScheduled
from tests.support.otlp import OtlpReceiver, ReceivedSpan, render_tree

from .conftest import ROOT, RunningStack
from .test_generation import MODEL

pytestmark = pytest.mark.e2e

SERVICES = {
    "imagegen-api",
    "imagegen-scheduler",
    "imagegen-gpu-worker",
    "imagegen-safety",
    "imagegen-delivery",
    "imagegen-pool-manager",
}
REQUESTED = GenerationRequested.event_type
SCHEDULED = JobScheduled.event_type
GENERATED = ImageGenerated.event_type


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert found, (
        f"no {name!r} span of {service}; have {sorted({(s.service, s.name) for s in spans})}"
    )
    return min(found, key=lambda s: s.start_ns)


def complete(r: OtlpReceiver, job_id: str) -> list[ReceivedSpan] | None:
    """The job's trace once every part of it arrived: all six services, the work spans and the
    webhook call; None before."""
    roots = r.find(lambda s: s.job_id == job_id and s.kind == "SERVER")
    if not roots:
        return None
    spans = r.trace(roots[0].trace_id)
    names = {s.name for s in spans}
    have = {s.service for s in spans}
    needed = {"denoise", "safety image check", "delivery upload", "webhook generation.delivered"}
    ids = {s.span_id for s in spans}
    parents_in = all(s.parent_id in ids for s in spans if s.parent_id)  # none still in flight
    return spans if have >= SERVICES and names >= needed and parents_in else None


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    out = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]  # type: ignore[index]
        out.append(span)
    return out


def test_one_job_is_one_trace_through_all_six_services(stack: RunningStack) -> None:
    assert stack.otlp is not None, "the stack fixture starts the OTLP receiver"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with stack.client() as c:
            r = c.post(
                "/v1/generations",
                json={
                    "prompt": "a traced blue circle",
                    "model": MODEL,
                    "steps": 3,
                    "seed": 7,
                    "webhook_url": f"http://127.0.0.1:{server.server_port}/hook",
                },
            )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert stack.wait_terminal(job_id)["status"] == "delivered"
        spans = stack.otlp.wait_for(lambda rc: complete(rc, job_id), timeout=60)
    finally:
        server.shutdown()

    trace_id = spans[0].trace_id
    tree = render_tree(spans)
    out = ROOT / "out" / f"trace-{job_id}.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"trace {trace_id} of job {job_id}\n{tree}\n")
    print(f"\ntrace {trace_id} of job {job_id} ({len(spans)} spans; {out}):\n{tree}")

    # One trace per job: every span naming the job, wherever it was received, is in it.
    assert {s.trace_id for s in stack.otlp.find(lambda s: s.job_id == job_id)} == {trace_id}
    assert {s.service for s in spans} >= SERVICES

    # The API's POST span is the root.
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_id is None]
    assert [(s.service, s.kind, s.name) for s in roots] == [
        ("imagegen-api", "SERVER", "POST /v1/generations")
    ], tree
    assert all(s.parent_id in by_id for s in spans if s.parent_id), "a parent span is missing"

    # Causal order: the scheduler consumed the request before the worker consumed its
    # assignment, which the scheduler published (the hop that used to break) ...
    scheduler_consume = one(spans, "imagegen-scheduler", f"consume {REQUESTED}")
    worker_consume = one(spans, "imagegen-gpu-worker", f"consume {SCHEDULED}")
    assert scheduler_consume.start_ns < worker_consume.start_ns
    assert any(
        a.service == "imagegen-scheduler" and a.kind == "PRODUCER"
        for a in ancestors(worker_consume, by_id)
    ), "the worker's assignment does not descend from the scheduler's publish"
    # ... then denoise, the image check, the upload and the webhook, one after the other.
    denoise = one(spans, "imagegen-gpu-worker", "denoise")
    image_check = one(spans, "imagegen-safety", "safety image check")
    upload = one(spans, "imagegen-delivery", "delivery upload")
    webhook = one(spans, "imagegen-delivery", "webhook generation.delivered")
    assert denoise.end_ns <= image_check.start_ns <= image_check.end_ns <= upload.start_ns
    assert upload.end_ns <= webhook.start_ns
    assert denoise.attributes["imagegen.steps"] == 3 and denoise.attributes["imagegen.family"]
    assert "step" in denoise.events
    assert any(s.kind == "CLIENT" and s.parent_id == webhook.span_id for s in spans), (
        "the webhook's HTTP call is not a client span under it"
    )
    checked_in = by_id[image_check.parent_id or ""]
    assert (checked_in.service, checked_in.name) == ("imagegen-safety", f"consume {GENERATED}")
    assert any(s.service == "imagegen-pool-manager" and s.kind == "CONSUMER" for s in spans)

    # Every span names the job, but the API's queries made before the job had an id (the key
    # lookup), which are children of the POST span all the same.
    unnamed = [
        (s.service, s.kind, s.name)
        for s in spans
        if s.job_id != job_id and not (s.service == "imagegen-api" and s.kind == "CLIENT")
    ]
    assert not unnamed, unnamed
