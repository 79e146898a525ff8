"""/ops: the operator page, for operator API keys only (ADR 0820, docs/ops.md).

A browser cannot send ``Authorization`` on navigation, so the page signs in with a form:
``POST /ops/session`` checks the key and sets it as an HttpOnly, SameSite=Strict cookie scoped to
``/ops``; every ``/ops`` route accepts that cookie or an ``Authorization: Bearer`` header, and
checks the key again on each request (through the API's key lookup, cached for 5 s).

- ``GET /ops``: the page; without a key the sign-in form, with a user key the 403 page;
- ``POST /ops/session`` (form or JSON ``key``), ``POST /ops/signout``;
- ``GET /ops/api/stream``: every panel as one SSE ``snapshot`` event per ``refresh_s``;
- ``GET /ops/api/{snapshot,queues,fleet,failures,dlq}``: the same panels as JSON;
- ``POST /ops/api/dlq/{id}/redrive``: the DLQ tools' redrive (501 while they are absent);
- ``GET /ops/api/jobs/{id}`` and ``/ops/api/jobs/{id}/events``: any user's job and its
  timeline as SSE (the stream of ``/v1/generations/{id}/events``).

JSON routes answer 401 without a valid key and 403 for a non-operator key. The queues come
from the scheduler's ``/v1/queues`` and the fleet from the pool-manager's ``/v1/workers``, both
called with the caller's own key; an upstream that is down or refuses makes its panel say
"<service> unreachable: <reason>", never a 500.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import parse_qs

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles

from imagegen_schemas import Tier

from ...domain.job import JobView, eta_s
from ...domain.plans import Caller
from .deps import Deps, DepsDep, JobIdPath
from .events import LastEventId, stream

OPERATOR = "operator"
COOKIE = "imagegen_ops"  # holds the operator key itself (ADR 0820)
COOKIE_PATH = "/ops"
COOKIE_MAX_AGE_S = 8 * 3600
STATIC = Path(__file__).with_name("ops_static")
BEARER = {"WWW-Authenticate": "Bearer"}
WAITING_LIMIT = 500  # waiting jobs read per snapshot (the page shows the first ones per tier)
MAX_KEY_CHARS = 256
LETTER_ID = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: http: https:;"
    " connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
)


class OpsReads(Protocol):
    """The job projection, as the page reads it."""

    async def waiting(self, limit: int) -> list[JobView]:
        """Jobs not yet scheduled (moderating or queued), oldest first."""
        ...

    async def failures(self, limit: int) -> list[JobView]:
        """Jobs that ended failed or rejected, newest first."""
        ...


class OpsDlq(Protocol):
    """The dead-letter queue, as the page reads and redrives it."""

    async def list(self, limit: int) -> dict[str, Any]:
        """``{"total": records held, "letters": [the newest ``limit``, each with an "id"]}``."""
        ...

    async def redrive(self, letter_id: str, by: str = "") -> dict[str, Any]:
        """Redrive one letter for the operator key ``by`` (its public id); raises
        NotImplementedError when redrive is not available, LookupError when there is no such
        letter, ValueError when the letter may not be redriven (the message says why)."""
        ...


@dataclass
class OpsDeps:
    """What the operator page needs beside the API's ``Deps``; built by bootstrap."""

    reads: OpsReads
    dlq: OpsDlq
    scheduler_url: str  # base URL of the scheduler (GET /v1/queues)
    pool_manager_url: str  # base URL of the pool-manager (GET /v1/workers)
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=3.0))
    refresh_s: float = 2.0  # seconds between two snapshots of GET /ops/api/stream
    failures_limit: int = 20
    dlq_limit: int = 15

    def __post_init__(self) -> None:
        self.scheduler_url = self.scheduler_url.rstrip("/")
        self.pool_manager_url = self.pool_manager_url.rstrip("/")


def mount(app: FastAPI, ops: OpsDeps) -> None:
    """Serve ``/ops`` on ``app`` (after ``entrypoints.http.mount``: it reads ``app.state.deps``)."""
    app.state.ops = ops
    app.include_router(router)
    app.mount("/ops/static", StaticFiles(directory=STATIC), name="ops-static")


async def get_ops(request: Request) -> OpsDeps:
    ops: OpsDeps = request.app.state.ops
    return ops


OpsDep = Annotated[OpsDeps, Depends(get_ops)]
router = APIRouter(prefix="/ops", tags=["ops"], include_in_schema=False)


# ---- who is calling ------------------------------------------------------------------------
@dataclass(frozen=True)
class Operator:
    caller: Caller
    key: str  # forwarded to the scheduler and the pool-manager as their bearer


def presented_key(request: Request) -> str | None:
    """``Authorization: Bearer`` if sent, else the sign-in cookie."""
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip() or None
    return request.cookies.get(COOKIE) or None


async def operator(request: Request, deps: DepsDep) -> Operator:
    """The caller, when their key is an operator's: else 401 (none, unknown) or 403."""
    key = presented_key(request)
    if key is None:
        raise HTTPException(
            401,
            "operator page: sign in at /ops, or send 'Authorization: Bearer <operator key>'",
            headers=BEARER,
        )
    who = await deps.accounts.caller(key)
    if who is None:
        raise HTTPException(401, "unknown or revoked API key", headers=BEARER)
    if who.role != OPERATOR:
        raise HTTPException(403, refused(who))
    return Operator(who, key)


OperatorDep = Annotated[Operator, Depends(operator)]


def refused(who: Caller) -> str:
    return f"operator page: this API key has role '{who.role}', not 'operator'"


# ---- the page, sign-in and sign-out --------------------------------------------------------
@router.get("", response_class=HTMLResponse)
async def page(request: Request, deps: DepsDep) -> Response:
    key = presented_key(request)
    if key is None:
        return sign_in_page()
    who = await deps.accounts.caller(key)
    if who is None:
        answer = sign_in_page("unknown or revoked API key: sign in again", 401)
        answer.delete_cookie(COOKIE, path=COOKIE_PATH)
        return answer
    if who.role != OPERATOR:
        return forbidden_page(who)
    return html_page(main_page(who))


@router.post("/session")
async def sign_in(request: Request, deps: DepsDep) -> Response:
    """Check the key from the form (``key=...``) or JSON (``{"key": ...}``); set the cookie."""
    key = await form_key(request)
    if not key:
        return sign_in_page("key: enter an operator API key", 422)
    if len(key) > MAX_KEY_CHARS or not key.isascii():
        return sign_in_page(f"key: at most {MAX_KEY_CHARS} ASCII characters", 422)
    who = await deps.accounts.caller(key)
    if who is None:
        return sign_in_page("unknown or revoked API key", 401)
    if who.role != OPERATOR:
        return forbidden_page(who)
    answer = RedirectResponse("/ops", status_code=303)
    answer.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return answer


@router.post("/signout")
async def sign_out() -> Response:
    answer = RedirectResponse("/ops", status_code=303)
    answer.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return answer


async def form_key(request: Request) -> str:
    body = await request.body()
    if len(body) > 4 * MAX_KEY_CHARS:
        return "x" * (MAX_KEY_CHARS + 1)  # refused as too long
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            found = json.loads(body or b"{}")
        except ValueError:
            return ""
        value = found.get("key") if isinstance(found, dict) else None
        return value.strip() if isinstance(value, str) else ""
    values = parse_qs(body.decode("utf-8", "replace")).get("key", [""])
    return values[0].strip()


def html_page(body: str, status: int = 200, title: str = "imagegen operator") -> HTMLResponse:
    return HTMLResponse(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='stylesheet' href='/ops/static/ops.css'></head>"
        f"<body>{body}</body></html>",
        status_code=status,
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"},
    )


def sign_in_page(message: str = "", status: int = 200) -> HTMLResponse:
    note = f"<p class='error' id='signin-error'>{html.escape(message)}</p>" if message else ""
    return html_page(
        "<main class='signin'><h1>imagegen operator</h1>"
        "<p>Sign in with an operator API key"
        " (<code>imagegen keys create --user U --plan P --role operator</code>).</p>"
        f"{note}<form method='post' action='/ops/session' id='signin'>"
        "<label for='key'>API key</label>"
        "<input type='password' id='key' name='key' autocomplete='off' required>"
        "<button type='submit'>Sign in</button></form></main>",
        status,
        "imagegen operator: sign in",
    )


def forbidden_page(who: Caller) -> HTMLResponse:
    return html_page(
        "<main class='signin'><h1 id='forbidden'>403: operator keys only</h1>"
        f"<p>{html.escape(refused(who), quote=False)}. Sign in with an operator key.</p>"
        "<form method='post' action='/ops/signout'><button type='submit'>Sign out</button>"
        "</form></main>",
        403,
        "imagegen operator: 403",
    )


def main_page(who: Caller) -> str:
    def panel(name: str, title: str, extra: str = "") -> str:
        return (
            f"<section class='panel' id='{name}'><h2>{title}</h2>{extra}"
            f"<p class='panel-error' hidden></p><div class='body'>loading…</div></section>"
        )

    timeline = (
        "<form id='job-form'><input id='job-id' name='job' placeholder='job id'"
        " pattern='[A-Za-z0-9_-]{1,64}' required><button type='submit'>Show</button></form>"
    )
    return (
        "<header><h1>imagegen operator</h1><span id='live' class='live'>connecting…</span>"
        f"<span class='who'>signed in as <b>{html.escape(who.user_id)}</b></span>"
        "<form method='post' action='/ops/signout' id='signout'>"
        "<button type='submit'>Sign out</button></form></header><main class='grid'>"
        + panel("queues", "Queues")
        + panel("fleet", "Fleet")
        + panel("failures", "Recent failures")
        + panel("dlq", "Dead letters", "<p class='dlq-status' hidden></p>")
        + panel("timeline", "Job timeline", timeline)
        + "</main><script src='/ops/static/ops.js'></script>"
    )


# ---- the panels ----------------------------------------------------------------------------
async def upstream(ops: OpsDeps, name: str, url: str, key: str) -> tuple[Any, str | None]:
    """GET ``url`` with the caller's key: (JSON, None), or (None, "<name> unreachable: ...")."""
    try:
        r = await ops.http.get(url, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        return None, f"{name} unreachable: {type(exc).__name__}: {exc or 'no answer'}"
    if r.status_code != 200:
        detail = r.text[:200]
        return None, f"{name} unreachable: it answered HTTP {r.status_code}: {detail}"
    try:
        return r.json(), None
    except ValueError:
        return None, f"{name} unreachable: its answer is not JSON"


def down(what: str, exc: BaseException) -> str:
    return f"{what} unreachable: {type(exc).__name__}: {exc}"[:500]


async def queues_panel(ops: OpsDeps, deps: Deps, key: str) -> dict[str, Any]:
    """Per tier: the scheduler's queued and running counts, and from the projection the jobs
    waiting, the oldest wait and the expected start of the next and the last (ETAs)."""
    (sched, error), (waiting, projection_error) = await asyncio.gather(
        upstream(ops, "scheduler", f"{ops.scheduler_url}/v1/queues", key),
        _waiting(ops),
    )
    now = deps.clock()
    tiers, jobs = [], []
    for tier in Tier:
        mine = [j for j in waiting if j.tier == tier.value]
        waits = [(now - j.created_at).total_seconds() for j in mine if j.created_at]
        etas = [
            e for i, j in enumerate(mine) if (e := eta_s(j, i, deps.avg_job_s, now)) is not None
        ]
        counts = sched if isinstance(sched, dict) else {}
        tiers.append(
            {
                "tier": tier.value,
                "queued": counts.get("queued", {}).get(tier.value),
                "running": counts.get("running", {}).get(tier.value),
                "waiting": len(mine),
                "oldest_wait_s": round(max(waits), 1) if waits else None,
                "next_eta_s": min(etas) if etas else None,
                "last_eta_s": max(etas) if etas else None,
            }
        )
        for i, j in enumerate(mine[:10]):
            jobs.append(
                {
                    "job_id": j.job_id,
                    "tier": tier.value,
                    "user_id": j.user_id,
                    "status": j.status,
                    "position": i,
                    "waited_s": round((now - j.created_at).total_seconds(), 1)
                    if j.created_at
                    else None,
                    "eta_s": eta_s(j, i, deps.avg_job_s, now),
                }
            )
    return {
        "error": error,
        "projection_error": projection_error,
        "tiers": tiers,
        "jobs": jobs,
        "waiting_capped": len(waiting) >= WAITING_LIMIT,
        "idle_workers": sched.get("idle_workers") if isinstance(sched, dict) else None,
        "workers": sched.get("workers") if isinstance(sched, dict) else None,
    }


async def _waiting(ops: OpsDeps) -> tuple[list[JobView], str | None]:
    try:
        return await ops.reads.waiting(WAITING_LIMIT), None
    except Exception as exc:
        return [], down("postgresql", exc)


async def fleet_panel(ops: OpsDeps, key: str) -> dict[str, Any]:
    """The pool-manager's workers: models, adapters, memory, in-flight jobs, last heartbeat."""
    workers, error = await upstream(ops, "pool-manager", f"{ops.pool_manager_url}/v1/workers", key)
    if workers is not None and not isinstance(workers, list):
        workers, error = None, "pool-manager unreachable: its answer is not a list of workers"
    now = time.time()
    for w in workers or []:
        if isinstance(w, dict) and isinstance(w.get("last_seen"), int | float):
            w["last_seen_s_ago"] = round(max(0.0, now - w["last_seen"]), 1)
    return {"error": error, "workers": workers or []}


async def failures_panel(ops: OpsDeps) -> dict[str, Any]:
    try:
        failed = await ops.reads.failures(ops.failures_limit)
    except Exception as exc:
        return {"error": down("postgresql", exc), "jobs": []}
    return {"error": None, "jobs": [failure(j) for j in failed]}


def failure(j: JobView) -> dict[str, Any]:
    at = j.stamps.get("failed") or (j.updated_at.isoformat() if j.updated_at else None)
    return {
        "job_id": j.job_id,
        "user_id": j.user_id,
        "tier": j.tier,
        "reason": j.failure_reason,
        "message": j.failure_message,
        "at": at,
    }


async def dlq_panel(ops: OpsDeps) -> dict[str, Any]:
    try:
        found = await ops.dlq.list(ops.dlq_limit)
    except Exception as exc:
        return {"error": down("kafka dead-letter topic", exc), "total": None, "letters": []}
    return {"error": None, "total": found.get("total"), "letters": found.get("letters", [])}


async def snapshot(ops: OpsDeps, deps: Deps, key: str) -> dict[str, Any]:
    panels: list[Awaitable[dict[str, Any]]] = [
        queues_panel(ops, deps, key),
        fleet_panel(ops, key),
        failures_panel(ops),
        dlq_panel(ops),
    ]
    queues, fleet, failures, dlq = await asyncio.gather(*panels)
    return {
        "at": deps.clock().isoformat(),
        "queues": queues,
        "fleet": fleet,
        "failures": failures,
        "dlq": dlq,
    }


@router.get("/api/snapshot")
async def snapshot_json(op: OperatorDep, ops: OpsDep, deps: DepsDep) -> dict[str, Any]:
    return await snapshot(ops, deps, op.key)


@router.get("/api/queues")
async def queues_json(op: OperatorDep, ops: OpsDep, deps: DepsDep) -> dict[str, Any]:
    return await queues_panel(ops, deps, op.key)


@router.get("/api/fleet")
async def fleet_json(op: OperatorDep, ops: OpsDep) -> dict[str, Any]:
    return await fleet_panel(ops, op.key)


@router.get("/api/failures")
async def failures_json(_: OperatorDep, ops: OpsDep) -> dict[str, Any]:
    return await failures_panel(ops)


@router.get("/api/dlq")
async def dlq_json(_: OperatorDep, ops: OpsDep) -> dict[str, Any]:
    return await dlq_panel(ops)


@router.post("/api/dlq/{letter_id}/redrive")
async def redrive(letter_id: str, op: OperatorDep, ops: OpsDep) -> JSONResponse:
    """The DLQ tools' redrive of one letter (their semantics); 501 when they are absent."""
    if not LETTER_ID.match(letter_id):
        raise HTTPException(422, "letter_id: 1 to 128 characters A-Z a-z 0-9 _ . : / -")
    try:
        done = await ops.dlq.redrive(letter_id, by=op.key[:12])  # the key's public id
    except NotImplementedError as exc:
        return JSONResponse({"detail": str(exc) or "redrive is not available"}, status_code=501)
    except LookupError as exc:
        return JSONResponse({"detail": f"no dead letter {letter_id}: {exc}"}, status_code=404)
    except ValueError as exc:  # refused by the tools, e.g. redriven already
        return JSONResponse({"detail": f"redrive refused: {exc}"}, status_code=409)
    except Exception as exc:
        return JSONResponse({"detail": f"redrive failed: {down('redrive', exc)}"}, 502)
    return JSONResponse(done)


@router.get("/api/stream")
async def live(
    request: Request,
    op: OperatorDep,
    ops: OpsDep,
    deps: DepsDep,
    count: Annotated[int | None, Query(ge=1, le=10_000, description="End after N")] = None,
) -> StreamingResponse:
    """Every panel as an SSE ``snapshot`` event each ``refresh_s`` seconds (``count``: end after
    that many); ``signed_out`` and the end of the stream once the key is revoked."""

    async def events() -> AsyncIterator[bytes]:
        sent = 0
        while not await request.is_disconnected():
            try:
                who = await deps.accounts.caller(op.key)
            except Exception:
                who = op.caller  # the key store is down: the panels say what they can
            if who is None or who.role != OPERATOR:
                yield b"event: signed_out\ndata: {}\n\n"
                return
            data = json.dumps(await snapshot(ops, deps, op.key))
            yield f"event: snapshot\ndata: {data}\n\n".encode()
            sent += 1
            if count is not None and sent >= count:
                return
            await asyncio.sleep(ops.refresh_s)  # the refresh period of the page

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


# ---- one job -------------------------------------------------------------------------------
async def any_job(deps: Deps, job_id: str, wait_s: float = 1.0) -> JobView:
    """Any user's job, else 404 (waits ``wait_s`` for a projection a few ms behind)."""
    deadline = time.monotonic() + wait_s
    while True:
        job = await deps.jobs.get(job_id)
        if job is not None and job.user_id:
            return job
        if time.monotonic() > deadline:
            raise HTTPException(404, f"no job {job_id}")
        await asyncio.sleep(0.05)  # the projection may be a few ms behind


def job_summary(j: JobView, now: datetime) -> dict[str, Any]:
    return {
        "job_id": j.job_id,
        "user_id": j.user_id,
        "tier": j.tier,
        "status": j.status,
        "model": j.params.get("model"),
        "prompt": j.params.get("prompt"),
        "created_at": j.created_at.isoformat() if j.created_at else None,
        "updated_at": j.updated_at.isoformat() if j.updated_at else None,
        "worker_id": j.worker_id,
        "attempt": j.attempt,
        "step": j.step,
        "total_steps": j.total_steps,
        "failure_reason": j.failure_reason,
        "failure_message": j.failure_message,
        "images": list(j.images),
        "age_s": round((now - j.created_at).total_seconds(), 1) if j.created_at else None,
    }


@router.get("/api/jobs/{job_id}")
async def job(job_id: JobIdPath, _: OperatorDep, deps: DepsDep) -> dict[str, Any]:
    """Any user's job, and when each event of its timeline happened (by the SSE ``id``)."""
    found = job_summary(await any_job(deps, job_id), deps.clock())
    rows = await deps.jobs.timeline(job_id)
    found["timeline"] = [
        {"seq": r["seq"], "type": r["type"], "at": r["occurred_at"].isoformat()} for r in rows
    ]
    return found


@router.get("/api/jobs/{job_id}/events")
async def job_events(
    job_id: JobIdPath,
    _: OperatorDep,
    deps: DepsDep,
    request: Request,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """The job's timeline as ``/v1/generations/{id}/events`` streams it, for any user's job."""
    await any_job(deps, job_id)
    start = int(last_event_id) if last_event_id else 0
    return StreamingResponse(
        stream(deps, job_id, start, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )
