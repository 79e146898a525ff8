"""The checker over small hand-made histories: a clean one passes, and each violation kind is
caught in a history built to show it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from imagegen_chaos.checker import check, render
from imagegen_chaos.history import (
    Answer,
    Fault,
    History,
    LogRecord,
    Submission,
    Verification,
    WebhookCall,
)

pytestmark = pytest.mark.unit

T0 = 1_000.0
_offset = iter(range(10_000))


def rec(job: str, type_: str, at: float, event_id: str | None = None, **data: Any) -> LogRecord:
    causation = data.pop("causation_id", None)
    n = next(_offset)
    return LogRecord(
        "imagegen.jobs.x", 0, n, event_id or f"e{n}", type_, T0 + at, job, causation, data
    )


def submission(job: str, key: str | None = None, *answers: Answer) -> Submission:
    accepted = Answer(T0 + 1, 202, {"id": job, "status": "accepted"})
    return Submission(key or f"k-{job}", "run-u0", "fast", T0, answers or (accepted,))


def delivered_job(job: str, event: str = "d1", token: int = 1) -> list[LogRecord]:
    """The log of a job that went all the way, image of ``token`` delivered as ``event``."""
    return [
        rec(
            job,
            "imagegen.generation.requested",
            1,
            user_id="run-u0",
            tier="fast",
            idempotency_key=f"k-{job}",
            webhook_url="http://hook",
        ),
        rec(job, "imagegen.prompt.moderated", 2, verdict="allowed"),
        rec(job, "imagegen.job.scheduled", 3, fencing_token=token),
        rec(job, "imagegen.image.generated", 4, fencing_token=token),
        rec(
            job, "imagegen.image.moderated", 5, f"m{token}", verdict="allowed", fencing_token=token
        ),
        rec(job, "imagegen.image.delivered", 6, event, causation_id=f"m{token}"),
    ]


def hook(
    job: str,
    event: str = "d1",
    ok: bool | None = True,
    type_: str = "generation.delivered",
    answered: int = 200,
    at: float = 6,
) -> WebhookCall:
    return WebhookCall(T0 + at, job, event, event, type_, ok, answered, "run-u0")


def ended_job(job: str, *ends: LogRecord) -> tuple[LogRecord, ...]:
    """A job requested (with a webhook URL), then ended by ``ends``."""
    return (delivered_job(job)[0], *ends)


def state(job: str, status: str) -> dict[str, Answer]:
    return {job: Answer(T0 + 90, 200, {"id": job, "status": status})}


def history(**kw: Any) -> History:
    base = History(
        run_id="run",
        started_at=T0,
        ended_at=T0 + 100,
        deadlines_s={"turbo": 30, "fast": 60, "relax": 90},
        user_prefix="run-",
        submissions=(submission("j1"),),
        final_reads={"j1": Answer(T0 + 90, 200, {"id": "j1", "status": "delivered"})},
        records=tuple(delivered_job("j1")),
        webhooks=(hook("j1"),),
        faults=(Fault(T0 + 2.5, "kafka", "kill"),),
        verification=Verification(True, True, "VERIFIED"),
    )
    return replace(base, **kw)


def kinds(h: History) -> dict[str, int]:
    return check(h).violation_counts()


def test_a_clean_history_passes_with_its_figures() -> None:
    report = check(history())
    assert report.ok, report.violations
    assert (report.jobs, report.stuck, report.duplicated) == (1, 0, 0)
    assert report.by_state == {"delivered": 1}
    assert report.longest_to_terminal_s == pytest.approx(5.0)
    assert report.faults == {"kill": {"kafka": 1}}
    assert render(report)[-1] == "PASS"


def test_a_job_without_terminal_fact_is_stuck_and_names_the_fault_before_it() -> None:
    h = history(records=tuple(delivered_job("j1")[:3]), webhooks=())
    report = check(h)
    assert report.violation_counts() == {"stuck": 1}
    (v,) = report.violations
    assert v.job_id == "j1" and "imagegen.job.scheduled" in v.detail
    assert v.faults == ("+2.5s kill kafka",)
    assert render(report)[-1] == "FAIL"


def test_a_job_accepted_on_the_log_but_never_answered_202_is_checked_too() -> None:
    lost = Submission("k-j2", "run-u0", "fast", T0, (Answer(T0 + 1, None, None, "timeout"),))
    h = history(
        submissions=(submission("j1"), lost),
        records=(*delivered_job("j1"), delivered_job("j2")[0]),
    )
    report = check(h)
    assert report.abandoned == 1
    assert [(v.kind, v.job_id) for v in report.violations] == [("stuck", "j2")]


def test_an_older_runs_jobs_on_the_log_are_not_this_runs() -> None:
    old = replace(delivered_job("j9")[0], data={"user_id": "other-u0", "tier": "fast"})
    assert kinds(history(records=(*delivered_job("j1"), old))) == {}


def test_a_terminal_state_after_the_deadline_is_late() -> None:
    late = [*delivered_job("j1")[:-1], replace(delivered_job("j1")[-1], occurred_at=T0 + 70)]
    assert kinds(history(records=tuple(late))) == {"late": 1}


def test_two_terminal_states_conflict() -> None:
    failed = rec("j1", "imagegen.generation.failed", 7, reason="timeout", terminal=True)
    assert kinds(history(records=(*delivered_job("j1"), failed))) == {"conflicting_terminal": 1}


def test_a_failed_attempt_that_is_not_terminal_is_not_an_end() -> None:
    attempt = rec("j1", "imagegen.generation.failed", 3.5, reason="worker_lost", terminal=False)
    assert kinds(history(records=(*delivered_job("j1"), attempt))) == {}


def test_a_rejected_prompt_is_a_terminal_failure() -> None:
    recs = ended_job("j1", rec("j1", "imagegen.prompt.moderated", 2, "p1", verdict="rejected"))
    rejected = hook("j1", "p1", type_="generation.rejected")
    h = history(records=recs, webhooks=(rejected,), final_reads=state("j1", "failed"))
    assert check(h).by_state == {"failed": 1} and kinds(h) == {}


def test_two_deliveries_with_different_event_ids_are_a_duplicate() -> None:
    again = rec("j1", "imagegen.image.delivered", 8, "d2", causation_id="m1")
    h = history(records=(*delivered_job("j1"), again))
    report = check(h)
    assert report.violation_counts() == {"duplicate_delivery": 1} and report.duplicated == 1


def test_the_same_delivery_event_twice_on_the_log_is_no_duplicate() -> None:
    again = replace(delivered_job("j1")[-1], offset=999)
    assert kinds(history(records=(*delivered_job("j1"), again))) == {}


def test_images_of_a_revoked_assignment_delivered_are_caught() -> None:
    job = delivered_job("j1")
    # The revocation is on the log before the image it should have stopped.
    revoked = replace(
        rec("j1", "imagegen.assignment.revoked", 3.5, fencing_token=1), offset=job[3].offset - 1
    )
    rescheduled = rec("j1", "imagegen.job.scheduled", 4.6, fencing_token=2)
    h = history(records=(*job, revoked, rescheduled))
    assert kinds(h) == {"stale_result_delivered": 1}


def test_a_result_on_the_log_before_its_revocation_is_not_stale() -> None:
    """The chaos soak's case: the pool-manager decided the worker lost (t=3.5) while the broker
    was away; its revocation was written after the worker's image (by offset), and its
    ``GenerationFailed(worker_lost)`` after the delivery. Log order makes the image the result;
    the failure finishes a decision taken before the end."""
    job = delivered_job("j1")
    late_revocation = replace(
        rec("j1", "imagegen.assignment.revoked", 3.5, fencing_token=1, reason="worker lost"),
        offset=job[3].offset + 1,
        producer="pool-manager-1",
    )
    its_failure = replace(
        rec(
            "j1",
            "imagegen.generation.failed",
            6.1,
            reason="worker_lost",
            terminal=False,
            fencing_token=1,
        ),
        producer="pool-manager-1",
    )
    assert kinds(history(records=(*job, late_revocation, its_failure))) == {}


def test_an_assignment_revoked_only_after_the_delivery_is_no_stale_delivery() -> None:
    # But deciding about a job that had already ended is: the deciders lost track of it.
    job = delivered_job("j1")  # on the log first
    revoked = rec("j1", "imagegen.assignment.revoked", 50, fencing_token=1)
    failed = rec("j1", "imagegen.generation.failed", 51, reason="worker_lost", terminal=False)
    report = check(history(records=(*job, revoked, failed)))
    assert report.violation_counts() == {"work_after_terminal": 1}
    assert "revoked token 1" in report.violations[0].detail


def test_a_job_assigned_again_after_it_ended_is_caught() -> None:
    again = rec("j1", "imagegen.job.scheduled", 9, fencing_token=2)
    assert kinds(history(records=(*delivered_job("j1"), again))) == {"work_after_terminal": 1}


def test_a_delivered_job_whose_webhook_never_came_is_caught() -> None:
    assert kinds(history(webhooks=())) == {"webhook_missing": 1}


def test_a_job_that_named_no_webhook_needs_no_call() -> None:
    quiet = replace(submission("j1"), webhook=False)
    assert kinds(history(submissions=(quiet,), webhooks=())) == {}


def test_a_webhook_retried_with_the_same_id_is_fine_but_another_id_is_not() -> None:
    refused_then_taken = (hook("j1", answered=503), hook("j1", at=7))
    assert kinds(history(webhooks=refused_then_taken)) == {}
    assert kinds(history(webhooks=(hook("j1"), hook("j1", "other")))) == {
        "webhook_id_mismatch": 1,
        "webhook_duplicate": 1,
    }


def test_a_body_whose_event_id_is_not_the_webhook_id_is_caught() -> None:
    call = replace(hook("j1"), body_event_id="x")
    report = check(history(webhooks=(call,)))
    assert report.violation_counts() == {"webhook_id_mismatch": 1}
    assert "d1/x" in report.violations[0].detail


def test_a_webhook_with_a_bad_signature_is_caught() -> None:
    # The only call did not verify: the job has no verified announcement either.
    assert kinds(history(webhooks=(hook("j1", ok=False),))) == {
        "webhook_bad_signature": 1,
        "webhook_missing": 1,
    }
    verified_retry = (hook("j1", ok=False, answered=503), hook("j1", at=7))
    assert kinds(history(webhooks=verified_retry)) == {"webhook_bad_signature": 1}


def test_a_webhook_for_a_job_the_log_never_ended_is_caught() -> None:
    h = history(records=tuple(delivered_job("j1")[:-1]))
    assert kinds(h) == {"stuck": 1, "webhook_without_terminal": 1}


def test_a_call_for_a_job_not_of_this_run_is_caught() -> None:
    report = check(history(webhooks=(hook("j1"), hook("j7", "x"))))
    assert [(v.kind, v.job_id) for v in report.violations] == [("webhook_without_terminal", "j7")]


@pytest.mark.parametrize(
    ("end", "api_status", "webhook_type"),
    [
        (
            rec("j1", "imagegen.generation.failed", 3, "f1", reason="timeout", terminal=True),
            "failed",
            "failed",
        ),
        (
            rec(
                "j1", "imagegen.generation.failed", 3, "f1", reason="image_rejected", terminal=True
            ),
            "failed",
            "rejected",
        ),
        (
            rec("j1", "imagegen.image.moderated", 3, "f1", verdict="rejected", fencing_token=1),
            "failed",
            "rejected",
        ),
        (rec("j1", "imagegen.generation.cancelled", 3, "f1", at_step=1), "cancelled", "cancelled"),
    ],
)
def test_every_terminal_state_is_announced_with_its_type(
    end: LogRecord, api_status: str, webhook_type: str
) -> None:
    kw: dict[str, Any] = {"records": ended_job("j1", end), "final_reads": state("j1", api_status)}
    right = hook("j1", "f1", type_=f"generation.{webhook_type}")
    assert kinds(history(**kw, webhooks=(right,))) == {}
    assert kinds(history(**kw, webhooks=())) == {"webhook_missing": 1}
    wrong = hook("j1", "f1", type_="generation.delivered")
    report = check(history(**kw, webhooks=(wrong,)))
    assert report.violation_counts() == {"webhook_type_mismatch": 1, "webhook_missing": 1}
    (mismatch,) = [v for v in report.violations if v.kind == "webhook_type_mismatch"]
    assert mismatch.detail == f"f1: generation.delivered (expected generation.{webhook_type})"


def test_two_messages_for_one_job_are_caught() -> None:
    """A rejected prompt can be on the log twice (the verdict, then the terminal failure);
    delivery announces the job once, under one of the two ids."""
    recs = ended_job(
        "j1",
        rec("j1", "imagegen.prompt.moderated", 2, "p1", verdict="rejected"),
        rec("j1", "imagegen.generation.failed", 3, "f1", reason="prompt_rejected", terminal=True),
    )
    kw: dict[str, Any] = {"records": recs, "final_reads": state("j1", "failed")}
    p1, f1 = (hook("j1", i, type_="generation.rejected") for i in ("p1", "f1"))
    assert kinds(history(**kw, webhooks=(f1,))) == {}
    assert kinds(history(**kw, webhooks=(p1, f1))) == {"webhook_duplicate": 1}
    # The refused p1 was followed by f1, not by a retry of p1.
    assert kinds(history(**kw, webhooks=(replace(p1, answered=503), f1))) == {
        "webhook_id_changed": 1,
        "webhook_not_retried": 1,
    }


def test_a_refused_call_never_retried_is_caught_unless_dead_lettered() -> None:
    refused = (hook("j1", answered=503),)
    report = check(history(webhooks=refused))
    assert report.violation_counts() == {"webhook_not_retried": 1}
    assert "d1 (last answered 503)" in report.violations[0].detail
    dead = LogRecord(
        "imagegen.webhooks.deadletter",
        0,
        0,
        "w1",
        "imagegen.webhook.dead_lettered",
        T0 + 40,
        "j1",
        "d1",
        {"message_id": "d1", "job_id": "j1", "reason": "answered 503"},
    )
    report = check(history(webhooks=refused, records=(*delivered_job("j1"), dead)))
    assert report.ok, report.violations
    assert report.webhooks_dead_lettered == 1
    report = check(history(webhooks=(), records=(*delivered_job("j1"), dead)))
    assert report.violation_counts() == {"webhook_missing": 1}
    assert "dead-lettered: answered 503" in report.violations[0].detail


def test_the_api_showing_another_state_than_the_log_is_caught() -> None:
    stale = {"j1": Answer(T0 + 90, 200, {"id": "j1", "status": "moderated"})}
    report = check(history(final_reads=stale))
    assert report.violation_counts() == {"api_disagrees": 1}
    assert "API says moderated" in report.violations[0].detail


def test_one_idempotency_key_making_two_jobs_is_caught() -> None:
    first = submission("j1", "k")
    second = submission("j2", "k")
    h = history(
        submissions=(first, second),
        records=(*delivered_job("j1"), *delivered_job("j2", "d2")),
        webhooks=(hook("j1"), hook("j2", "d2")),
        final_reads={
            "j1": Answer(T0, 200, {"status": "delivered"}),
            "j2": Answer(T0, 200, {"status": "delivered"}),
        },
    )
    assert kinds(h) == {"idempotency_split": 1}


def test_a_retry_refused_with_422_is_caught_but_409_is_a_retry() -> None:
    refused = submission(
        "j1",
        None,
        Answer(T0 + 1, None, None, "ReadTimeout"),
        Answer(T0 + 2, 422, {"detail": "already used with a different request body"}),
    )
    report = check(history(submissions=(refused,)))
    assert report.violation_counts() == {"submission_refused": 1}
    assert "attempt 2, after None" in report.violations[0].detail
    in_flight = submission("j1", None, Answer(T0 + 1, 409, {}), Answer(T0 + 2, 202, {"id": "j1"}))
    assert kinds(history(submissions=(in_flight,))) == {}


def test_a_server_error_is_a_violation_and_a_503_is_not() -> None:
    """Regression (stop 21): the 3-worker soak passed with three 500 answers (the limiter during
    a PostgreSQL restart); a fault must be answered 503 naming the dependency."""
    errored = submission(
        "j1",
        None,
        Answer(T0 + 1, 500, "Internal Server Error"),
        Answer(T0 + 2, 503, {"dependency": "postgresql"}),
        Answer(T0 + 3, 202, {"id": "j1"}),
    )
    report = check(history(submissions=(errored,)))
    assert report.violation_counts() == {"server_error": 1}
    assert "500 (attempt 1)" in report.violations[0].detail
    unavailable = submission(
        "j1", None, Answer(T0 + 1, 503, {"dependency": "kafka"}), Answer(T0 + 2, 202, {"id": "j1"})
    )
    assert kinds(history(submissions=(unavailable,))) == {}


def test_a_projection_that_differs_from_the_rebuild_is_caught_per_job() -> None:
    out = "replayed 9 records\n  DIFF j1: live=moderated@x rebuilt=delivered@y\nMISMATCH"
    report = check(history(verification=Verification(True, False, out, 1)))
    assert [(v.kind, v.job_id) for v in report.violations] == [("projection_mismatch", "j1")]
    crashed = check(history(verification=Verification(True, False, "Traceback ...", 1)))
    assert crashed.violation_counts() == {"projection_unverified": 1}


def test_a_history_survives_its_json() -> None:
    h = history(
        submissions=(replace(submission("j1"), cancel=Answer(T0 + 2, 202, {"status": "x"})),),
        notes=("a note",),
    )
    assert History.from_json(h.to_json()) == h


def test_terminal_states_per_job_from_the_log() -> None:
    from imagegen_chaos.checker import terminal_states

    recs = [*delivered_job("j1"), *delivered_job("j2")[:3]]
    assert terminal_states(recs) == {"j1": {"delivered"}, "j2": set()}
