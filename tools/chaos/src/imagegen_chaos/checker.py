"""The checker: a pure function from a recorded soak history to a report (docs/adr/0010).

Invariants, each a violation kind (one per job and kind, with the faults around it):

- ``stuck``: an accepted job (a 202, or a GenerationRequested of this run on the log) has no
  terminal fact: ImageDelivered, a terminal GenerationFailed, a rejected prompt, a rejected image
  of the current assignment, or GenerationCancelled.
- ``late``: the first terminal fact came more than the tier's deadline after the first 202.
- ``conflicting_terminal``: more than one terminal state (delivered and failed, ...).
- ``duplicate_delivery``: two ImageDelivered with different event ids, or deliveries caused by
  the images of two different fencing tokens.
- ``stale_result_delivered``: the delivered images come from an assignment whose revocation
  precedes the images in the log (offsets of the job's partition of imagegen.jobs.generated).
- ``work_after_terminal``: the job was assigned, revoked or had an attempt failed after it had
  ended: a decider lost track of a finished job.
- Webhooks (Standard Webhooks, docs/adr/0403), for every terminal state. Delivery announces a
  job's end once: one message, its webhook-id the id of the event that ended the job, its type
  ``generation.<delivered|failed|rejected|cancelled>``; a failed call is retried with the same
  id until a 2xx, else it ends on the webhook dead-letter topic.
  ``webhook_missing``: an ended job that named a webhook got no verified call whose id and type
  are those of one of its terminal events. ``webhook_id_mismatch``: a call's webhook-id is no
  terminal event of the job (or differs from the body's event_id). ``webhook_type_mismatch``: a
  call's type is not the state its event ended the job in. ``webhook_bad_signature``: a call's
  webhook-signature did not verify with its user's secret. ``webhook_id_changed``: the job's
  calls carried several webhook-ids (retries must keep the id). ``webhook_duplicate``: calls
  under two webhook-ids were answered 2xx (the client would act twice). ``webhook_not_retried``:
  a message never answered 2xx and not dead-lettered. ``webhook_without_terminal``: a call for a
  job the log never ended (or that is not this run's).
- ``api_disagrees``: the API's last answer for the job is not the terminal state on the log.
- ``idempotency_split``: one Idempotency-Key led to more than one job.
- ``submission_refused``: a valid submission was answered 4xx (other than 409 and 429).
- ``projection_mismatch``: ``imagegen replay --rebuild --verify`` found the live projection
  different from a rebuild from the log; ``projection_unverified`` when it could not finish.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .history import Fault, History, LogRecord, WebhookCall

REQUESTED = "imagegen.generation.requested"
PROMPT_MODERATED = "imagegen.prompt.moderated"
SCHEDULED = "imagegen.job.scheduled"
IMAGE_MODERATED = "imagegen.image.moderated"
DELIVERED = "imagegen.image.delivered"
FAILED = "imagegen.generation.failed"
CANCELLED = "imagegen.generation.cancelled"
REVOKED = "imagegen.assignment.revoked"
GENERATED = "imagegen.image.generated"
DEADLETTER_TOPIC = "imagegen.deadletter"
WEBHOOK_DEAD = "imagegen.webhook.dead_lettered"  # on imagegen.webhooks.deadletter
REJECTIONS = frozenset({"prompt_rejected", "image_rejected"})  # failures announced as rejected
RETRYABLE_4XX = frozenset({409, 429})  # "still in flight" and "slow down": the client retries


@dataclass(frozen=True)
class Violation:
    kind: str
    job_id: str | None
    detail: str
    faults: tuple[str, ...] = ()  # faults around the job's last event, "+SECONDS kind target"


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    tier: str
    accepted_at: float  # first 202 (or the GenerationRequested, for a job no client saw accepted)
    terminal: tuple[str, ...]  # terminal states found on the log, sorted
    first_terminal_at: float | None
    last_event: str  # type of the job's last event on the log
    last_event_at: float


@dataclass(frozen=True)
class Report:
    submissions: int  # POSTs (each with its retries)
    jobs: int  # accepted jobs
    abandoned: int  # submissions that never got a 202 (the client gave up)
    by_state: dict[str, int]  # terminal state -> jobs; "stuck" for none
    stuck: int
    duplicated: int  # jobs delivered more than once
    longest_to_terminal_s: float | None
    longest_job: str | None
    faults: dict[str, dict[str, int]]  # kind -> target -> count
    answers: dict[str, int]  # POST answers by HTTP status ("none": no answer)
    webhook_calls: int
    dead_lettered: int  # records of this run's jobs on the dead-letter topic
    webhooks_dead_lettered: int  # webhook messages of this run's jobs that ran out of retries
    violations: tuple[Violation, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.violations

    def violation_counts(self) -> dict[str, int]:
        return dict(Counter(v.kind for v in self.violations))


def _ends(recs: list[LogRecord]) -> list[tuple[LogRecord, str, str]]:
    """(record, terminal state, webhook type) for each of one job's records that ends it: an
    image rejection counts only for the current assignment (highest fencing token)."""
    tokens = [int(r.data.get("fencing_token", 0)) for r in recs if r.type == SCHEDULED]
    current = max(tokens, default=None)
    out: list[tuple[LogRecord, str, str]] = []
    for r in recs:
        if r.type == DELIVERED:
            out.append((r, "delivered", "generation.delivered"))
        elif r.type == FAILED and r.data.get("terminal", True):
            rejected = r.data.get("reason") in REJECTIONS
            out.append((r, "failed", f"generation.{'rejected' if rejected else 'failed'}"))
        elif r.type == PROMPT_MODERATED and r.data.get("verdict") == "rejected":
            out.append((r, "failed", "generation.rejected"))
        elif r.type == IMAGE_MODERATED and r.data.get("verdict") == "rejected":
            token = r.data.get("fencing_token")
            if token is None or current is None or int(token) == current:
                out.append((r, "failed", "generation.rejected"))
        elif r.type == CANCELLED:
            out.append((r, "cancelled", "generation.cancelled"))
    return out


def _terminal_facts(recs: list[LogRecord]) -> dict[str, float]:
    """Terminal state -> time of its first fact, for one job's records."""
    found: dict[str, float] = {}
    for r, state, _ in _ends(recs):
        found[state] = min(r.occurred_at, found.get(state, r.occurred_at))
    return found


def webhook_messages(recs: list[LogRecord]) -> dict[str, str]:
    """webhook-id -> webhook type of each message delivery may send about one job: the event
    id of each record that ends it (delivery sends the first one it reads)."""
    return {r.event_id: kind for r, _, kind in _ends(recs)}


def terminal_states(records: tuple[LogRecord, ...] | list[LogRecord]) -> dict[str, set[str]]:
    """Job id -> terminal states on the log (empty set: none yet)."""
    by_job: dict[str, list[LogRecord]] = defaultdict(list)
    for r in records:
        by_job[r.job_id].append(r)
    return {job: set(_terminal_facts(recs)) for job, recs in by_job.items()}


def _delivery_violations(job_id: str, recs: list[LogRecord]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    delivered = {r.event_id: r for r in recs if r.type == DELIVERED}
    if len(delivered) > 1:
        out.append(("duplicate_delivery", f"ImageDelivered event ids {sorted(delivered)}"))
    moderated = {r.event_id: r for r in recs if r.type == IMAGE_MODERATED}
    tokens = {
        int(moderated[d.causation_id].data["fencing_token"])
        for d in delivered.values()
        if d.causation_id in moderated
        and moderated[d.causation_id].data.get("fencing_token") is not None
    }
    if len(tokens) > 1 and len(delivered) <= 1:
        out.append(("duplicate_delivery", f"images of fencing tokens {sorted(tokens)} delivered"))
    # A result is stale when a revocation of its assignment precedes it in the log: the order the
    # deciders and safety read (both records are keyed by job, on one partition of
    # imagegen.jobs.generated). A revocation decided earlier but written after the result
    # (its publish retried through a broker outage) comes too late to stop it.
    images = {int(r.data["fencing_token"]): r for r in recs if r.type == GENERATED}
    first_delivery = min(delivered.values(), key=lambda d: d.occurred_at, default=None)
    revocations = [r for r in recs if r.type == REVOKED]

    def stale_by(t: int) -> list[int]:
        """Tokens of the revocations that came before token ``t``'s result."""
        result = images.get(t, first_delivery)  # no image on the log: judge by the delivery
        return [
            int(r.data["fencing_token"])
            for r in revocations
            if result is not None and int(r.data["fencing_token"]) >= t and _before(r, result)
        ]

    stale = {t: stale_by(t) for t in sorted(tokens)}
    stale = {t: by for t, by in stale.items() if by}
    if stale:
        out.append(
            (
                "stale_result_delivered",
                f"delivered images of token {sorted(stale)} after token "
                f"{max(max(by) for by in stale.values())} was revoked",
            )
        )
    return out


def _before(a: LogRecord, b: LogRecord) -> bool:
    """Whether ``a`` precedes ``b`` in the log: by offset on one partition, else by time."""
    if (a.topic, a.partition) == (b.topic, b.partition):
        return a.offset < b.offset
    return a.occurred_at < b.occurred_at


def _work_after_terminal(recs: list[LogRecord], first_terminal: float | None) -> list[str]:
    """Lifecycle decisions taken about a job after it had ended (assigned, revoked, an
    attempt failed): the deciders lost track of a finished job.

    A lost worker's ``GenerationFailed(worker_lost)`` is the second half of one decision with
    its ``AssignmentRevoked`` (the pool-manager publishes both): when the revocation was decided
    before the end, the failure is not a new decision, however late it was written.
    """
    if first_terminal is None:
        return []
    decided_before_end = {
        (r.producer, r.data.get("fencing_token"))
        for r in recs
        if r.type == REVOKED and r.occurred_at <= first_terminal
    }

    def after_end(r: LogRecord) -> bool:
        if r.occurred_at <= first_terminal:
            return False
        if r.type in (SCHEDULED, REVOKED):
            return True
        return (
            r.type == FAILED
            and not r.data.get("terminal")
            and (r.producer, r.data.get("fencing_token")) not in decided_before_end
        )

    return [
        f"{r.type.rsplit('.', 1)[-1]} token {r.data.get('fencing_token', '-')}"
        f" by {r.producer or '?'} +{r.occurred_at - first_terminal:.1f}s after the end"
        for r in recs
        if after_end(r)
    ]


def _webhook_violations(
    recs: list[LogRecord], calls: list[WebhookCall], wanted: bool, dead: dict[str, str]
) -> list[tuple[str, str]]:
    """``dead``: webhook-id -> why delivery dead-lettered it (the job's webhook dead letters)."""
    out: list[tuple[str, str]] = []
    ends = webhook_messages(recs)
    ids = sorted({str(c.webhook_id) for c in calls})
    if calls and not ends:
        out.append(("webhook_without_terminal", f"{len(calls)} call(s), webhook-ids {ids}"))
        return out
    if not ends:
        return out
    announced = [c for c in calls if c.webhook_id in ends and c.type == ends[c.webhook_id]]
    if wanted and not any(c.signature_ok for c in announced):
        why = f"; dead-lettered: {'; '.join(sorted(set(dead.values())))}" if dead else ""
        out.append(
            (
                "webhook_missing",
                f"no verified call announcing {sorted(set(ends.values()))} "
                f"(webhook-ids {sorted(ends)}), {len(calls)} call(s){why}",
            )
        )
    foreign = sorted(
        {str(c.webhook_id) for c in calls if c.webhook_id not in ends}
        | {f"{c.webhook_id}/{c.body_event_id}" for c in calls if c.body_event_id != c.webhook_id}
    )
    if foreign:
        out.append(
            (
                "webhook_id_mismatch",
                f"calls carried {foreign}; the job's terminal events are {sorted(ends)}",
            )
        )
    mistyped = sorted(
        {
            f"{c.webhook_id}: {c.type} (expected {ends[c.webhook_id]})"
            for c in calls
            if c.webhook_id in ends and c.type != ends[c.webhook_id]
        }
    )
    if mistyped:
        out.append(("webhook_type_mismatch", "; ".join(mistyped)))
    bad = sum(1 for c in calls if c.signature_ok is False)
    if bad:
        out.append(("webhook_bad_signature", f"{bad} call(s) not signed with the user's secret"))
    acked = sorted({str(c.webhook_id) for c in calls if 200 <= c.answered < 300})
    if len(acked) > 1:
        out.append(("webhook_duplicate", f"answered 2xx under webhook-ids {acked}"))
    elif len(ids) > 1:
        out.append(("webhook_id_changed", f"calls under webhook-ids {ids}"))
    unfinished = [i for i in ids if i not in acked and i not in dead]
    if unfinished:
        last = {str(c.webhook_id): c.answered for c in sorted(calls, key=lambda c: c.at)}
        out.append(
            (
                "webhook_not_retried",
                ", ".join(f"{i} (last answered {last[i]})" for i in unfinished)
                + ": never answered 2xx and not dead-lettered",
            )
        )
    return out


def _fault_line(f: Fault, t0: float) -> str:
    length = f" {f.duration_s:.0f}s" if f.duration_s else ""
    return f"+{f.at - t0:.1f}s {f.kind}{length} {f.target}"


def _faults_around(h: History, start: float, end: float, n: int = 4) -> tuple[str, ...]:
    """Up to ``n`` faults from shortly before ``start`` to shortly after ``end``."""
    near = [f for f in h.faults if start - 5 <= f.at <= end + 15]
    if len(near) > n:  # the first ones (what started the trouble) and the last ones
        near = near[: n // 2] + near[-(n - n // 2) :]
    return tuple(_fault_line(f, h.started_at) for f in near)


def check(h: History) -> Report:  # noqa: C901 - one pass per invariant, in the docstring's order
    violations: list[Violation] = []
    by_job: dict[str, list[LogRecord]] = defaultdict(list)
    for r in h.records:
        by_job[r.job_id].append(r)

    # Which jobs are this run's, when each was accepted, and which key made which job.
    accepted_at: dict[str, float] = {}
    tier: dict[str, str] = {}
    wants_webhook: dict[str, bool] = {}
    key_jobs: dict[str, set[str]] = defaultdict(set)
    answers: Counter[str] = Counter()
    abandoned = 0
    for s in h.submissions:
        for a in s.answers:
            answers[str(a.status) if a.status is not None else "none"] += 1
        if not s.accepted:
            abandoned += 1
        for i, a in enumerate(s.answers):
            if a.status is not None and 400 <= a.status < 500 and a.status not in RETRYABLE_4XX:
                retry = f" (attempt {i + 1}, after {s.answers[i - 1].status})" if i else ""
                violations.append(
                    Violation(
                        "submission_refused",
                        None,
                        f"key {s.idempotency_key}: {a.status}{retry} {str(a.body)[:200]}",
                    )
                )
            if a.status is not None and a.status >= 500 and a.status != 503:
                # a fault is answered 503 naming the dependency, never a bare server error
                violations.append(
                    Violation(
                        "server_error",
                        None,
                        f"key {s.idempotency_key}: {a.status} (attempt {i + 1})"
                        f" {str(a.body)[:200]}",
                    )
                )
        for a in s.accepted:
            job_id = str(a.body["id"])
            key_jobs[s.idempotency_key].add(job_id)
            accepted_at[job_id] = min(a.at, accepted_at.get(job_id, a.at))
            tier[job_id] = s.tier
            wants_webhook[job_id] = s.webhook
    for r in h.records:
        if r.type == REQUESTED and str(r.data.get("user_id", "")).startswith(h.user_prefix):
            accepted_at.setdefault(r.job_id, r.occurred_at)
            tier.setdefault(r.job_id, str(r.data.get("tier", "")))
            wants_webhook.setdefault(r.job_id, bool(r.data.get("webhook_url")))
            if r.data.get("idempotency_key"):
                key_jobs[str(r.data["idempotency_key"])].add(r.job_id)
    for key, jobs in sorted(key_jobs.items()):
        if len(jobs) > 1:
            violations.append(
                Violation("idempotency_split", None, f"key {key}: jobs {sorted(jobs)}")
            )

    calls: dict[str | None, list[WebhookCall]] = defaultdict(list)
    for c in h.webhooks:
        calls[c.job_id].append(c)
    dead: dict[str, dict[str, str]] = defaultdict(dict)  # job -> webhook-id -> reason
    for r in h.records:
        if r.type == WEBHOOK_DEAD and r.data.get("message_id"):
            job = str(r.data.get("job_id") or r.job_id)
            dead[job][str(r.data["message_id"])] = str(r.data.get("reason", ""))
    deadline_max = max(h.deadlines_s.values(), default=0.0)

    outcomes: list[JobOutcome] = []
    duplicated: set[str] = set()
    for job_id in sorted(accepted_at):
        recs = sorted(by_job.get(job_id, []), key=lambda r: r.occurred_at)
        facts = _terminal_facts(recs)
        last = recs[-1] if recs else None
        first = min(facts.values(), default=None)
        out = JobOutcome(
            job_id,
            tier.get(job_id, ""),
            accepted_at[job_id],
            tuple(sorted(facts)),
            first,
            last.type if last else "(none)",
            last.occurred_at if last else accepted_at[job_id],
        )
        outcomes.append(out)
        found: list[tuple[str, str]] = []
        if not facts:
            found.append(
                (
                    "stuck",
                    f"last event {out.last_event} at +{out.last_event_at - h.started_at:.1f}s",
                )
            )
        else:
            took = (first or 0.0) - out.accepted_at
            limit = h.deadlines_s.get(out.tier, deadline_max)
            if took > limit:
                found.append(
                    ("late", f"{took:.1f}s to {'/'.join(out.terminal)} (deadline {limit:.0f}s)")
                )
            if len(facts) > 1:
                found.append(("conflicting_terminal", "states " + ", ".join(out.terminal)))
        after = _work_after_terminal(recs, first)
        if after:
            found.append(("work_after_terminal", "; ".join(after[:3])))
        delivery = _delivery_violations(job_id, recs)
        if any(k == "duplicate_delivery" for k, _ in delivery):
            duplicated.add(job_id)
        found += delivery
        found += _webhook_violations(
            recs, calls.pop(job_id, []), wants_webhook[job_id], dead.get(job_id, {})
        )
        read = h.final_reads.get(job_id)
        api_status = read.body.get("status") if read and isinstance(read.body, dict) else None
        if len(facts) == 1 and api_status != out.terminal[0]:
            seen = api_status or (f"HTTP {read.status}" if read else "no read")
            found.append(("api_disagrees", f"log says {out.terminal[0]}, API says {seen}"))
        for kind, detail in found:
            # Faults while the job was on its way; for a stuck job or work after its end, up
            # to its last event.
            late_kinds = ("stuck", "work_after_terminal")
            end = out.last_event_at if kind in late_kinds or first is None else first
            start = first if kind == "work_after_terminal" and first else out.accepted_at
            violations.append(Violation(kind, job_id, detail, _faults_around(h, start, end)))
    for unknown, cs in calls.items():  # calls for jobs that are not this run's accepted jobs
        violations.append(
            Violation("webhook_without_terminal", unknown, f"{len(cs)} call(s) for an unknown job")
        )

    v = h.verification
    if v is not None and v.ran and not v.ok:
        diffs = re.findall(r"DIFF (\S+): (.*)", v.output)
        for job_id, detail in diffs:
            violations.append(Violation("projection_mismatch", job_id, detail.strip()))
        if not diffs:  # it did not get as far as comparing
            violations.append(
                Violation("projection_unverified", None, f"replay --verify: {v.output[-300:]}")
            )

    faults: dict[str, dict[str, int]] = defaultdict(dict)
    for f in h.faults:
        faults[f.kind][f.target] = faults[f.kind].get(f.target, 0) + 1
    states = Counter("/".join(o.terminal) or "stuck" for o in outcomes)
    to_end = [
        (o.first_terminal_at - o.accepted_at, o.job_id)
        for o in outcomes
        if o.first_terminal_at is not None
    ]
    longest = max(to_end, default=None)
    ours = set(accepted_at)
    return Report(
        submissions=len(h.submissions),
        jobs=len(outcomes),
        abandoned=abandoned,
        by_state=dict(states),
        stuck=states.get("stuck", 0),
        duplicated=len(duplicated),
        longest_to_terminal_s=round(longest[0], 3) if longest else None,
        longest_job=longest[1] if longest else None,
        faults={k: dict(v) for k, v in faults.items()},
        answers=dict(answers),
        webhook_calls=len(h.webhooks),
        dead_lettered=sum(1 for r in h.records if r.topic == DEADLETTER_TOPIC and r.job_id in ours),
        webhooks_dead_lettered=sum(len(v) for job, v in dead.items() if job in ours),
        violations=tuple(violations),
    )


def render(report: Report, max_listed: int = 30) -> list[str]:
    """The human summary: figures first, then each violation with its job and nearby faults."""
    fault_total = sum(sum(t.values()) for t in report.faults.values())
    lines = [
        f"jobs: {report.jobs} accepted of {report.submissions} submissions"
        f" ({report.abandoned} abandoned by their client)",
        "faults: "
        + (
            f"{fault_total} ("
            + "; ".join(
                f"{kind} " + ", ".join(f"{t}={n}" for t, n in sorted(targets.items()))
                for kind, targets in sorted(report.faults.items())
            )
            + ")"
            if fault_total
            else "none"
        ),
        "states: " + ", ".join(f"{k}={n}" for k, n in sorted(report.by_state.items())),
        f"terminal: {report.jobs - report.stuck}  stuck: {report.stuck}"
        f"  duplicated: {report.duplicated}",
        "longest time to a terminal state: "
        + (
            f"{report.longest_to_terminal_s:.1f}s ({report.longest_job})"
            if report.longest_to_terminal_s is not None
            else "-"
        ),
        "POST answers: " + ", ".join(f"{k}={n}" for k, n in sorted(report.answers.items())),
        f"webhook calls: {report.webhook_calls} ({report.webhooks_dead_lettered} messages"
        f" dead-lettered); dead-lettered records: {report.dead_lettered}",
    ]
    counts = report.violation_counts()
    lines.append(
        "violations: "
        + (", ".join(f"{k}={n}" for k, n in sorted(counts.items())) if counts else "none")
    )
    for v in report.violations[:max_listed]:
        near = f"  [faults: {'; '.join(v.faults)}]" if v.faults else ""
        lines.append(f"  {v.kind:<24} {v.job_id or '-'}  {v.detail}{near}")
    if len(report.violations) > max_listed:
        lines.append(f"  ... {len(report.violations) - max_listed} more in the JSON summary")
    lines.append("PASS" if report.ok else "FAIL")
    return lines
