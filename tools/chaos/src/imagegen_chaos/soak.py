"""One soak, start to finish: stack up, users (API key and webhook secret each), receiver,
faults, clients, heal, drain (jobs, then their webhook calls), record, verify, check, stack down
(always, unless asked to keep it)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .checker import check, render, terminal_states
from .clients import PLAN_TIER, Soak, Tracker, User, Workload, final_reads
from .faults import BlobFault, FaultInjector, FaultPlan
from .history import Answer, Fault, History
from .recorder import read_topics, verify_projection
from .stack import ChaosStack
from .webhooks import WebhookReceiver

PLANS = ("free", "pro", "turbo")
SETTLE_S = 60.0  # how long an API answer may lag the log after the projector caught up
WEBHOOK_SETTLE_S = 60.0  # beyond the retry schedule: calls queued behind a restarted delivery


@dataclass(frozen=True)
class SoakConfig:
    stack: ChaosStack
    workload: Workload
    faults: FaultPlan | None  # None: no faults (a baseline run)
    deadlines_s: dict[str, float]  # tier -> seconds from the 202 to a terminal state
    users: int = 6
    seed: int = 0
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 0
    webhook_url: str | None = None  # base jobs name (+ /<user id>); default http://HOST:PORT/hook
    webhook_fail_share: float = 0.05
    out: Path | None = None  # history.json and summary.json; default VAR/report
    keep_stack: bool = False
    reuse_stack: bool = False  # the stack is already up (development of the harness)


def say(msg: str) -> None:
    print(f"chaos {time.strftime('%H:%M:%S')} {msg}", flush=True)


def run(cfg: SoakConfig) -> int:
    st = cfg.stack
    out = cfg.out or st.var / "report"
    run_id = f"c{uuid.uuid4().hex[:8]}"
    blobs = BlobFault(st.blobs)
    blobs.restore()  # a previous run that died mid-fault
    if not cfg.reuse_stack:
        say(f"stack up in {st.var} (kafka {st.bootstrap}, api {st.api_url})")
        st.up()
    injector: FaultInjector | None = None
    try:
        users = [
            User(f"{run_id}-u{i}", PLANS[i % 3], st.create_key(f"{run_id}-u{i}", PLANS[i % 3]))
            for i in range(cfg.users)
        ]
        say(f"run {run_id}: {len(users)} users ({', '.join(u.plan for u in users)})")
        # Each user's secret exists before any of their jobs ends, so delivery signs with it.
        secrets = {u.user_id: [st.webhook_secret(u.user_id)] for u in users}
        receiver = WebhookReceiver(
            cfg.webhook_host, cfg.webhook_port, secrets, cfg.webhook_fail_share, cfg.seed
        )
        receiver.start()
        hook = cfg.webhook_url or f"http://{cfg.webhook_host}:{receiver.port}/hook"
        tracker = Tracker(st.bootstrap)
        tracker.start()
        soak = Soak(
            st.api_url, users, replace(cfg.workload, webhook_url=hook), tracker, cfg.seed, run_id
        )
        started = time.time()
        if cfg.faults is not None:
            injector = FaultInjector(
                st.supervisor, blobs, cfg.faults, cfg.seed, on_fault=_say_fault(started)
            )
            injector.start()
        say(f"submitting {cfg.workload.jobs} jobs, at most {cfg.workload.max_in_flight} in flight")
        notes: list[str] = []
        try:
            asyncio.run(_submit_with_progress(soak))
        except KeyboardInterrupt:  # the operator cut the load short: still heal, drain, check
            notes.append(f"interrupted after {len(soak.submissions)} submissions")
            say(notes[-1] + "; Ctrl-C again to skip the drain")
        if injector is not None:
            injector.heal()
            say(f"faults stopped after {len(injector.faults)}; all paused processes resumed")
        bad = st.wait_ready(180)
        if bad:
            notes.append(f"not ready 180 s after the faults stopped: {bad}")
        drain = max(cfg.deadlines_s.values())
        say(f"draining: waiting up to {drain:.0f}s for accepted jobs to end")
        deadline = time.monotonic() + drain
        try:
            while time.monotonic() < deadline and set(soak.accepted) - tracker.terminal:
                time.sleep(1.0)  # between looks at the tracker's terminal set
        except KeyboardInterrupt:
            notes.append("drain skipped by the operator")
        left = len(set(soak.accepted) - tracker.terminal)
        say(f"drained: {left} accepted jobs without a terminal state")
        wait = sum(st.webhook_retry_schedule_s) + WEBHOOK_SETTLE_S
        say(f"waiting up to {wait:.0f}s for a verified, answered webhook call per ended job")
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline and _unanswered(soak, tracker, receiver):
                time.sleep(1.0)  # between looks at the receiver's calls
        except KeyboardInterrupt:
            notes.append("webhook wait skipped by the operator")
        say(f"{len(_unanswered(soak, tracker, receiver))} ended jobs without an answered call")
        say("reading the topics from offset 0")
        records = read_topics(st.bootstrap)
        owners = {u.user_id: u.key for u in users}
        jobs = {str(a.body["id"]): owners[s.user_id] for s in soak.submissions for a in s.accepted}
        for r in records:  # jobs on the log whose client never saw the 202 are read too
            if r.type == "imagegen.generation.requested" and r.data.get("user_id") in owners:
                jobs.setdefault(r.job_id, owners[str(r.data["user_id"])])
        # The rebuild waits until the live projector has committed past the log's end, so the
        # API's answers read after it should show the log's terminal states.
        say(f"{len(records)} records; imagegen replay --rebuild --verify")
        verification = verify_projection(st.bootstrap, st.database_url, st.env())
        say(f"reading back {len(jobs)} jobs from the API")
        reads = asyncio.run(_settled_reads(st.api_url, jobs, terminal_states(records), notes))
        tracker.stop()
        receiver.stop()
        history = History(
            run_id=run_id,
            started_at=started,
            ended_at=time.time(),
            deadlines_s=cfg.deadlines_s,
            user_prefix=f"{run_id}-",
            submissions=tuple(soak.submissions),
            final_reads=reads,
            records=tuple(records),
            webhooks=tuple(receiver.calls),
            faults=tuple(injector.faults) if injector else (),
            verification=verification,
            notes=(*notes, *(injector.notes if injector else ())),
        )
        history.save(out / "history.json")
        return report(history, out)
    finally:
        if injector is not None:
            injector.heal()
        blobs.restore()
        if not cfg.keep_stack:
            say("stack down")
            st.down()


def _unanswered(soak: Soak, tracker: Tracker, receiver: WebhookReceiver) -> set[str]:
    """Ended jobs of this run whose webhook no verified call answered 2xx has announced yet."""
    ended = set(soak.accepted) & tracker.terminal if soak.workload.webhook_url else set()
    return ended - receiver.acknowledged()


def report(history: History, out: Path) -> int:
    result = check(history)
    summary = {
        "run_id": history.run_id,
        "ok": result.ok,
        "duration_s": round(history.ended_at - history.started_at, 1),
        "violation_counts": result.violation_counts(),
        "notes": list(history.notes),
        **asdict(result),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for line in render(result):
        print(line)
    for note in history.notes:
        print("note:", note)
    print(f"history: {out / 'history.json'}  summary: {out / 'summary.json'}")
    return 0 if result.ok else 1


async def _settled_reads(
    api_url: str, jobs: dict[str, str], ends: dict[str, set[str]], notes: list[str]
) -> dict[str, Answer]:
    """The API's answer per job; those that differ from the log are read again for up to
    ``SETTLE_S`` (a projector still catching up), and the lag is noted."""
    reads = await final_reads(api_url, jobs)
    t0 = time.monotonic()

    def differing() -> dict[str, str]:
        out = {}
        for job, key in jobs.items():
            body = reads[job].body if job in reads else None
            status = body.get("status") if isinstance(body, dict) else None
            if len(ends.get(job, set())) == 1 and status not in ends[job]:
                out[job] = key
        return out

    lagging = differing()
    while (left := differing()) and time.monotonic() - t0 < SETTLE_S:
        await asyncio.sleep(2.0)  # between re-reads of the jobs the projection has not caught up
        reads.update(await final_reads(api_url, left))
    if lagging:
        notes.append(
            f"{len(lagging)} jobs' API answers lagged the log at the first read;"
            f" {len(differing())} still differ after {time.monotonic() - t0:.0f}s"
        )
    return reads


def _say_fault(t0: float) -> Callable[[Fault], None]:
    def show(f: Fault) -> None:
        length = f" {f.duration_s:.0f}s" if f.duration_s else ""
        say(f"fault +{f.at - t0:.0f}s {f.kind}{length} {f.target} ({f.detail})")

    return show


async def _submit_with_progress(soak: Soak) -> None:
    task = asyncio.create_task(soak.run())
    while not task.done():
        await asyncio.wait({task}, timeout=15)
        say(
            f"submitted {len(soak.submissions)}/{soak.workload.jobs}, accepted"
            f" {len(soak.accepted)}, terminal {len(set(soak.accepted) & soak.tracker.terminal)},"
            f" in flight {soak.in_flight()}"
        )
    task.result()


__all__ = ["PLAN_TIER", "SoakConfig", "report", "run"]
