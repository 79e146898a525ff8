"""/ops, the operator page (ADR 0820): who gets in, what each panel says, upstreams down."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from api_testkit import Clock, make_app, make_deps

from imagegen_api.adapters.memory import InMemoryAccounts, InMemoryJobStore
from imagegen_api.adapters.opsreads import KafkaDlq, MemoryOpsReads, find_redrive
from imagegen_api.domain.plans import Caller
from imagegen_api.entrypoints.http import ops
from imagegen_api.entrypoints.http.deps import Deps
from imagegen_runtime.operator_auth import hash_key
from imagegen_schemas import Envelope, Payload, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.common import GenerationParams

pytestmark = pytest.mark.unit

OPERATOR_KEY = "igk_operator_key_for_tests_0000000000000000"
SCHEDULER = "http://scheduler.test"
POOL = "http://pool.test"
QUEUES = {
    "queued": {"turbo": 0, "fast": 2, "relax": 1},
    "running": {"turbo": 0, "fast": 1, "relax": 0},
    "idle_workers": [],
    "workers": ["worker-local-1"],
}
WORKERS = [
    {
        "worker_id": "worker-local-1",
        "state": "busy",
        "gpu_type": "cpu",
        "models": [{"model_id": "shapes-demo", "kind": "base", "bytes": 28186700}],
        "adapters": [],
        "memory_total_bytes": 2**34,
        "memory_used_bytes": 2**31,
        "running_job_id": "job-running",
        "in_flight": [],
        "last_seen": 1.0,
    }
]
# Every JSON route of /ops (method, path); the page and the SSE streams are checked on their own.
JSON_ROUTES = [
    ("GET", "/ops/api/snapshot"),
    ("GET", "/ops/api/queues"),
    ("GET", "/ops/api/fleet"),
    ("GET", "/ops/api/failures"),
    ("GET", "/ops/api/dlq"),
    ("POST", "/ops/api/dlq/letter-1/redrive"),
    ("GET", "/ops/api/stream?count=1"),
    ("GET", "/ops/api/jobs/job-failed"),
    ("GET", "/ops/api/jobs/job-failed/events"),
]


@dataclass
class FakeDlq:
    letters: list[dict[str, Any]] = field(default_factory=list)
    redriven: list[str] = field(default_factory=list)
    by: list[str] = field(default_factory=list)
    down: bool = False
    can_redrive: bool = False

    async def list(self, limit: int) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("broker gone")
        return {"total": len(self.letters), "letters": self.letters[:limit]}

    async def redrive(self, letter_id: str, by: str = "") -> dict[str, Any]:
        if not self.can_redrive:
            raise NotImplementedError("redrive is not available in this build")
        if letter_id not in {x["id"] for x in self.letters}:
            raise LookupError(letter_id)
        if letter_id in self.redriven:
            raise ValueError(f"dead letter {letter_id} was redriven already")
        self.redriven.append(letter_id)
        self.by.append(by)
        return {"id": letter_id, "redriven": True}


class DownReads:
    async def waiting(self, limit: int) -> list[Any]:
        raise ConnectionRefusedError(111, "connection refused")

    async def failures(self, limit: int) -> list[Any]:
        raise ConnectionRefusedError(111, "connection refused")


@dataclass
class Upstreams:
    """The scheduler and pool-manager as an httpx transport: what they answer, what they got."""

    scheduler: Any = field(default_factory=lambda: QUEUES)  # JSON, an int status, or an exception
    pool: Any = field(default_factory=lambda: WORKERS)
    seen: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.scheduler if request.url.host == "scheduler.test" else self.pool
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer, json={"detail": "not ready"})
        return httpx.Response(200, json=answer)


@dataclass
class Ops:
    client: httpx.AsyncClient
    deps: Deps
    ops: ops.OpsDeps
    upstreams: Upstreams
    dlq: FakeDlq
    user_key: str


def params() -> GenerationParams:
    return GenerationParams(
        prompt="a red square",
        model="shapes-demo",
        width=64,
        height=64,
        steps=2,
        guidance_scale=5,
        seed=1,
    )


async def put(store: InMemoryJobStore, job_id: str, *payloads: Payload, at: Clock) -> None:
    for p in payloads:
        env = Envelope.wrap(p, correlation_id=job_id, producer="test", occurred_at=at.now)
        await store.apply(env, p, "t", 0, len(store.events))


@pytest.fixture
async def api() -> AsyncIterator[Ops]:
    clock = Clock()
    accounts, jobs = InMemoryAccounts(), InMemoryJobStore()
    deps = make_deps(accounts=accounts, jobs=jobs, clock=clock)
    accounts.keys[hash_key(OPERATOR_KEY)] = (Caller("ops-person", Plan.PRO, "operator"), False)
    user_key = await accounts.create_key("alice", Plan.PRO)
    start = clock.now
    # one failed job (terminal failure), two waiting in the fast tier
    requested = ev.GenerationRequested(
        job_id="job-failed", user_id="alice", plan=Plan.PRO, tier=Tier.FAST, params=params()
    )
    failed = ev.GenerationFailed(
        job_id="job-failed",
        attempt=1,
        fencing_token=1,
        reason=ev.FailureReason.OUT_OF_MEMORY,
        message="CUDA out of memory on worker-local-1",
        terminal=True,
    )
    await put(jobs, "job-failed", requested, failed, at=clock)
    for i, job_id in enumerate(("job-a", "job-b")):
        clock.now = start + timedelta(seconds=10 * i)
        p = ev.GenerationRequested(
            job_id=job_id, user_id="bob", plan=Plan.PRO, tier=Tier.FAST, params=params()
        )
        allowed = ev.PromptModerated(job_id=job_id, verdict=ev.Verdict.ALLOWED)
        await put(jobs, job_id, p, allowed, at=clock)
    clock.now = start + timedelta(seconds=30)
    upstreams, dlq = Upstreams(), FakeDlq(letters=[{"id": "letter-1", "error": "bad json"}])
    http = httpx.AsyncClient(transport=httpx.MockTransport(upstreams.handle))
    opsdeps = ops.OpsDeps(
        reads=MemoryOpsReads(jobs),
        dlq=dlq,
        scheduler_url=SCHEDULER + "/",
        pool_manager_url=POOL,
        http=http,
        refresh_s=0.01,
    )
    app = make_app(deps)
    ops.mount(app, opsdeps)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield Ops(client, deps, opsdeps, upstreams, dlq, user_key)
    await http.aclose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of an SSE body."""
    out = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields.get("data", "{}"))))
    return out


# ---- who gets in ---------------------------------------------------------------------------
async def test_without_a_key_the_page_is_the_sign_in_form(api: Ops) -> None:
    r = await api.client.get("/ops")
    assert r.status_code == 200
    assert "<form method='post' action='/ops/session'" in r.text
    assert "signed in as" not in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_without_a_key_every_ops_api_route_is_401(api: Ops, method: str, path: str) -> None:
    r = await api.client.request(method, path)
    assert r.status_code == 401, r.text
    assert "sign in at /ops" in r.json()["detail"]
    r = await api.client.request(method, path, headers=bearer("igk_unknown"))
    assert r.status_code == 401
    assert r.json()["detail"] == "unknown or revoked API key"


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_a_user_key_gets_403_on_every_ops_api_route(api: Ops, method: str, path: str) -> None:
    r = await api.client.request(method, path, headers=bearer(api.user_key))
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == "operator page: this API key has role 'user', not 'operator'"
    assert api.upstreams.seen == [] and api.dlq.redriven == []


async def test_a_user_key_gets_the_403_page_by_header_and_at_sign_in(api: Ops) -> None:
    r = await api.client.get("/ops", headers=bearer(api.user_key))
    assert r.status_code == 403
    assert "403: operator keys only" in r.text and "role 'user'" in r.text
    r = await api.client.post("/ops/session", data={"key": api.user_key})
    assert r.status_code == 403
    assert "403: operator keys only" in r.text
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize(("method", "path"), [("GET", "/ops"), *JSON_ROUTES])
async def test_an_operator_key_as_bearer_gets_every_route(api: Ops, method: str, path: str) -> None:
    r = await api.client.request(method, path, headers=bearer(OPERATOR_KEY))
    # the redrive of the fake DLQ is not available: 501, past the key check
    assert r.status_code == (501 if path.endswith("/redrive") else 200), r.text


async def test_cookie_sign_in_and_sign_out(api: Ops) -> None:
    r = await api.client.post("/ops/session", data={"key": OPERATOR_KEY})
    assert r.status_code == 303 and r.headers["location"] == "/ops"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{ops.COOKIE}={OPERATOR_KEY};")
    for attribute in ("HttpOnly", "Path=/ops", "SameSite=strict", "Max-Age=28800"):
        assert attribute.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower()  # plain http here; https sets Secure
    # the client keeps the cookie: the page and the JSON routes take it
    page = await api.client.get("/ops")
    assert page.status_code == 200
    assert "signed in as <b>ops-person</b>" in page.text
    assert "<script src='/ops/static/ops.js'></script>" in page.text
    assert (await api.client.get("/ops/api/failures")).status_code == 200
    out = await api.client.post("/ops/signout")
    assert out.status_code == 303
    assert f'{ops.COOKIE}=""' in out.headers["set-cookie"]
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert ops.COOKIE not in api.client.cookies
    assert "action='/ops/session'" in (await api.client.get("/ops")).text
    assert (await api.client.get("/ops/api/failures")).status_code == 401


async def test_sign_in_by_json_and_bad_sign_ins(api: Ops) -> None:
    r = await api.client.post("/ops/session", json={"key": OPERATOR_KEY})
    assert r.status_code == 303
    api.client.cookies.clear()
    r = await api.client.post("/ops/session", data={"key": "igk_nobody"})
    assert r.status_code == 401 and "unknown or revoked API key" in r.text
    r = await api.client.post("/ops/session", data={})
    assert r.status_code == 422 and "key: enter an operator API key" in r.text
    r = await api.client.post("/ops/session", data={"key": "x" * 300})
    assert r.status_code == 422 and "key: at most 256 ASCII characters" in r.text
    assert "set-cookie" not in r.headers


async def test_a_revoked_key_in_the_cookie_gets_the_sign_in_form_again(api: Ops) -> None:
    await api.client.post("/ops/session", data={"key": OPERATOR_KEY})
    caller, _ = api.deps.accounts.keys[hash_key(OPERATOR_KEY)]  # type: ignore[attr-defined]
    api.deps.accounts.keys[hash_key(OPERATOR_KEY)] = (caller, True)  # type: ignore[attr-defined]
    r = await api.client.get("/ops")
    assert r.status_code == 401
    assert "unknown or revoked API key: sign in again" in r.text
    assert "Max-Age=0" in r.headers["set-cookie"]
    assert (await api.client.get("/ops/api/queues")).status_code == 401


async def test_the_static_script_is_served(api: Ops) -> None:
    r = await api.client.get("/ops/static/ops.js")
    assert r.status_code == 200
    assert 'new EventSource("/ops/api/stream")' in r.text


# ---- the panels ----------------------------------------------------------------------------
async def test_queues_join_the_schedulers_counts_with_waits_and_etas(api: Ops) -> None:
    r = await api.client.get("/ops/api/queues", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 200
    q = r.json()
    assert q["error"] is None and q["projection_error"] is None
    fast = next(t for t in q["tiers"] if t["tier"] == "fast")
    # job-a waited 30 s, job-b 20 s; no WaitEstimated yet: (position + 1) * avg_job_s (2 s)
    assert fast == {
        "tier": "fast",
        "queued": 2,
        "running": 1,
        "waiting": 2,
        "oldest_wait_s": 30.0,
        "next_eta_s": 2.0,
        "last_eta_s": 4.0,
    }
    assert [(j["job_id"], j["position"], j["waited_s"]) for j in q["jobs"]] == [
        ("job-a", 0, 30.0),
        ("job-b", 1, 20.0),
    ]
    # the scheduler was called with the caller's own key
    (call,) = [c for c in api.upstreams.seen if c.url.host == "scheduler.test"]
    assert str(call.url) == "http://scheduler.test/v1/queues"
    assert call.headers["authorization"] == f"Bearer {OPERATOR_KEY}"


async def test_fleet_failures_and_dlq_panels(api: Ops) -> None:
    snap = (await api.client.get("/ops/api/snapshot", headers=bearer(OPERATOR_KEY))).json()
    (worker,) = snap["fleet"]["workers"]
    assert worker["worker_id"] == "worker-local-1"
    assert worker["models"][0]["model_id"] == "shapes-demo"
    assert worker["running_job_id"] == "job-running"
    assert worker["last_seen_s_ago"] > 0
    (failed,) = snap["failures"]["jobs"]
    assert failed["job_id"] == "job-failed" and failed["user_id"] == "alice"
    assert failed["reason"] == "out_of_memory"
    assert failed["message"] == "CUDA out of memory on worker-local-1"
    assert failed["at"].startswith("2026-01-01T00:00:00")
    assert snap["dlq"] == {
        "error": None,
        "total": 1,
        "letters": [{"id": "letter-1", "error": "bad json"}],
    }
    pool = [c for c in api.upstreams.seen if c.url.host == "pool.test"]
    assert [c.headers["authorization"] for c in pool] == [f"Bearer {OPERATOR_KEY}"]


async def test_upstreams_down_make_their_panels_say_so_never_a_500(api: Ops) -> None:
    api.upstreams.scheduler = httpx.ConnectError("[Errno 111] Connection refused")
    api.upstreams.pool = 503
    api.dlq.down = True
    api.ops.reads = DownReads()
    r = await api.client.get("/ops/api/snapshot", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 200
    snap = r.json()
    assert snap["queues"]["error"] == (
        "scheduler unreachable: ConnectError: [Errno 111] Connection refused"
    )
    assert snap["queues"]["projection_error"].startswith(
        "postgresql unreachable: ConnectionRefusedError"
    )
    assert [t["queued"] for t in snap["queues"]["tiers"]] == [None, None, None]
    assert snap["fleet"] == {
        "error": 'pool-manager unreachable: it answered HTTP 503: {"detail":"not ready"}',
        "workers": [],
    }
    assert snap["failures"]["error"].startswith("postgresql unreachable:")
    assert snap["dlq"]["error"] == (
        "kafka dead-letter topic unreachable: ConnectionError: broker gone"
    )


async def test_a_refused_connection_names_the_scheduler(api: Ops) -> None:
    """A real socket: nothing listens on port 1 of the loopback."""
    async with httpx.AsyncClient(timeout=3.0) as real:
        api.ops.http = real
        api.ops.scheduler_url = "http://127.0.0.1:1"
        r = await api.client.get("/ops/api/queues", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 200
    assert r.json()["error"].startswith("scheduler unreachable: ConnectError: ")


async def test_the_stream_sends_snapshots(api: Ops) -> None:
    r = await api.client.get("/ops/api/stream?count=2", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [name for name, _ in events] == ["snapshot", "snapshot"]
    assert events[0][1]["fleet"]["workers"][0]["worker_id"] == "worker-local-1"


async def test_the_stream_ends_when_the_key_is_revoked(api: Ops) -> None:
    accounts: Any = api.deps.accounts
    real = accounts.caller
    calls = 0

    async def revoked_after_the_check(key: str) -> Caller | None:
        nonlocal calls
        calls += 1
        return await real(key) if calls == 1 else None  # the route's check, then revoked

    accounts.caller = revoked_after_the_check
    r = await api.client.get("/ops/api/stream", headers=bearer(OPERATOR_KEY))
    assert [name for name, _ in sse(r.text)] == ["signed_out"]


# ---- dead letters --------------------------------------------------------------------------
async def test_redrive_without_the_dlq_tools_is_501_naming_where_it_looks(api: Ops) -> None:
    api.ops.dlq = KafkaDlq("127.0.0.1:1", redrive_fn=lambda: find_redrive(("no_such_dlq",)))
    r = await api.client.post("/ops/api/dlq/letter-1/redrive", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 501
    assert r.json()["detail"] == (
        "redrive is not available in this build: the DLQ tools' redrive(bootstrap, prefix,"
        " letter_id) was not found (no module no_such_dlq); use `imagegen dlq redrive`"
    )


def test_the_redrive_seam_is_the_dlq_tools_function() -> None:
    """The function /ops calls: in imagegen_runtime.dlq, taking (bootstrap, prefix, letter_id)."""
    fn = find_redrive()
    assert fn.__module__ == "imagegen_runtime.dlq"
    assert list(inspect.signature(fn).parameters)[:3] == ["bootstrap", "prefix", "letter_id"]
    assert "by" in inspect.signature(fn).parameters


async def test_redrive_calls_the_seam_and_names_a_missing_letter(api: Ops) -> None:
    api.dlq.can_redrive = True
    r = await api.client.post("/ops/api/dlq/letter-1/redrive", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 200 and r.json() == {"id": "letter-1", "redriven": True}
    assert api.dlq.redriven == ["letter-1"]
    assert api.dlq.by == [OPERATOR_KEY[:12]]  # the operator key's public id, for the record
    r = await api.client.post("/ops/api/dlq/letter-1/redrive", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 409
    assert r.json()["detail"] == "redrive refused: dead letter letter-1 was redriven already"
    r = await api.client.post("/ops/api/dlq/nope/redrive", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 404 and r.json()["detail"].startswith("no dead letter nope")
    r = await api.client.post("/ops/api/dlq/a%20b/redrive", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 422 and r.json()["detail"].startswith("letter_id:")


async def test_kafka_dlq_hands_redrive_to_the_tools_function() -> None:
    got: list[tuple[str, str, str, str]] = []

    @dataclass
    class Letter:
        id: str
        letter: Any

    @dataclass
    class Redriven:
        letter: Letter
        redrive: int
        partition: int
        offset: int

    async def redrive(bootstrap: str, prefix: str, letter_id: str, *, by: str = "") -> Redriven:
        got.append((bootstrap, prefix, letter_id, by))
        if letter_id == "gone":
            raise type("NoSuchLetter", (ValueError,), {})("no dead letter 'gone'")
        source = type("D", (), {"source_topic": "imagegen.jobs.requested"})()
        return Redriven(Letter(letter_id, source), 1, 2, 40)

    dlq = KafkaDlq("kafka:9092", "p.", redrive_fn=lambda: redrive)
    assert await dlq.redrive("letter-9", by="igk_abcdefgh") == {
        "id": "letter-9",
        "redrive": 1,
        "source_topic": "imagegen.jobs.requested",
        "partition": 2,
        "offset": 40,
    }
    assert got == [("kafka:9092", "p.", "letter-9", "igk_abcdefgh")]
    with pytest.raises(LookupError, match="no dead letter 'gone'"):
        await dlq.redrive("gone")


# ---- one job -------------------------------------------------------------------------------
async def test_an_operator_reads_any_users_job_and_its_timeline(api: Ops) -> None:
    r = await api.client.get("/ops/api/jobs/job-failed", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 200
    job = r.json()
    assert (job["user_id"], job["status"], job["failure_reason"]) == (
        "alice",
        "failed",
        "out_of_memory",
    )
    assert [(t["type"], t["at"][:19]) for t in job["timeline"]] == [
        ("imagegen.generation.requested", "2026-01-01T00:00:00"),
        ("imagegen.generation.failed", "2026-01-01T00:00:00"),
    ]
    r = await api.client.get("/ops/api/jobs/job-failed/events", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 200
    events = sse(r.text)
    assert [name for name, _ in events] == ["accepted", "failed"]
    # each SSE id is the seq the job's timeline dates
    ids = [line.removeprefix("id: ") for line in r.text.splitlines() if line.startswith("id: ")]
    assert ids == [str(t["seq"]) for t in job["timeline"]]
    assert events[1][1] == {
        "reason": "out_of_memory",
        "message": "CUDA out of memory on worker-local-1",
    }
    # alice herself reads it through /v1; bob's key there gets 404, and /ops refuses both
    r = await api.client.get("/ops/api/jobs/missing", headers=bearer(OPERATOR_KEY))
    assert r.status_code == 404 and r.json()["detail"] == "no job missing"
