"""What a soak records, as plain frozen dataclasses that round-trip through JSON.

The checker reads nothing else: a saved history can be checked again, and the checker's tests
build small histories by hand. Times are unix seconds (one machine, one clock).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange as the client saw it."""

    at: float  # when the answer (or the transport error) came
    status: int | None  # HTTP status; None when no answer came (connection refused, timeout)
    body: Any = None  # the JSON body, or the text when it was not JSON
    error: str | None = None  # the transport error, when status is None


@dataclass(frozen=True)
class Submission:
    """One POST /v1/generations with all its retries (same Idempotency-Key, same body)."""

    idempotency_key: str
    user_id: str
    tier: str  # the tier of the user's plan: turbo, fast, relax
    sent_at: float  # first attempt
    answers: tuple[Answer, ...]  # every attempt's answer, in order
    webhook: bool = True  # the body named the harness's webhook receiver
    cancel: Answer | None = None  # the answer to DELETE, when the client cancelled the job

    @property
    def accepted(self) -> tuple[Answer, ...]:
        return tuple(a for a in self.answers if a.status == 202)


@dataclass(frozen=True)
class LogRecord:
    """One record of a job topic (or the dead-letter topic), read from offset 0."""

    topic: str
    partition: int
    offset: int
    event_id: str
    type: str  # envelope type, e.g. imagegen.image.delivered
    occurred_at: float
    job_id: str  # correlation id; for a dead-lettered record, the original record's key
    causation_id: str | None
    data: dict[str, Any]
    producer: str = ""  # service (and instance) that published it


@dataclass(frozen=True)
class WebhookCall:
    """One call the harness's webhook receiver got (Standard Webhooks, docs/adr/0403)."""

    at: float
    job_id: str | None  # "job_id" in the body
    webhook_id: str | None  # the webhook-id header: the same on every retry of one message
    body_event_id: str | None  # "event_id" in the body (delivery sets it to the webhook-id)
    type: str | None  # "type" in the body: generation.delivered | failed | rejected | cancelled
    signature_ok: bool | None  # checked with the user's secrets; None when none were known
    answered: int  # the status the receiver answered (it fails some calls on purpose)
    user_id: str | None = None  # the user the URL named (/hook/<user>): whose secrets verified


@dataclass(frozen=True)
class Fault:
    """One injected fault."""

    at: float
    target: str  # a service of faults.SERVICES (api-projector included), kafka, postgres, blobs
    kind: str  # kill (SIGKILL), pause (SIGSTOP then SIGCONT), unwritable (blob folder replaced)
    duration_s: float = 0.0  # pause / unwritable length; 0 for a kill
    detail: str = ""  # pids, or why nothing was done


@dataclass(frozen=True)
class Verification:
    """`imagegen replay --rebuild --verify` against the soak's stack."""

    ran: bool
    ok: bool
    output: str  # what it printed (DIFF lines name the jobs)
    returncode: int | None = None


@dataclass(frozen=True)
class History:
    run_id: str
    started_at: float
    ended_at: float
    deadlines_s: dict[str, float]  # tier -> most seconds from the 202 to a terminal state
    user_prefix: str  # user ids of this run start with it (the log may hold older runs' jobs)
    submissions: tuple[Submission, ...] = ()
    final_reads: dict[str, Answer] = field(default_factory=dict)  # job id -> last GET
    records: tuple[LogRecord, ...] = ()
    webhooks: tuple[WebhookCall, ...] = ()
    faults: tuple[Fault, ...] = ()
    verification: Verification | None = None
    notes: tuple[str, ...] = ()  # what the harness itself met (a heal that failed, ...)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())

    @classmethod
    def from_json(cls, text: str) -> History:
        d = json.loads(text)

        def answer(a: dict[str, Any] | None) -> Answer | None:
            return None if a is None else Answer(**a)

        return cls(
            run_id=d["run_id"],
            started_at=d["started_at"],
            ended_at=d["ended_at"],
            deadlines_s=d["deadlines_s"],
            user_prefix=d["user_prefix"],
            submissions=tuple(
                Submission(
                    **{
                        **s,
                        "answers": tuple(Answer(**a) for a in s["answers"]),
                        "cancel": answer(s.get("cancel")),
                    }
                )
                for s in d["submissions"]
            ),
            final_reads={k: Answer(**v) for k, v in d["final_reads"].items()},
            records=tuple(LogRecord(**r) for r in d["records"]),
            webhooks=tuple(WebhookCall(**w) for w in d["webhooks"]),
            faults=tuple(Fault(**f) for f in d["faults"]),
            verification=Verification(**d["verification"]) if d["verification"] else None,
            notes=tuple(d.get("notes", ())),
        )

    @classmethod
    def load(cls, path: Path) -> History:
        return cls.from_json(path.read_text())
