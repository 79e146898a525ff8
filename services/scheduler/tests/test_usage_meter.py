"""The usage meter's fold and service (ADR 0630): one UsageRecorded per ended job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_scheduler.domain.usage import UsageFold
from imagegen_scheduler.service_layer.usage import UsageMeter, usage_event_id
from imagegen_schemas import Envelope, GenerationParams, Payload, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.usage import AttemptOutcome, UsageRecorded, UsageState
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
JOB = "job-1"
SHA = "a" * 64
PARAMS = GenerationParams(
    prompt="p", model="m1", width=64, height=64, steps=4, guidance_scale=5, seed=1, num_images=2
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def env(payload: Payload, seconds: float, key: str = JOB) -> Envelope:
    return Envelope.wrap(payload, correlation_id=key, producer="test", occurred_at=at(seconds))


def beat(worker_id: str, gpu_type: str) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=worker_id,
        status=WorkerStatus.IDLE,
        gpu_type=gpu_type,
        memory_total_bytes=1,
        memory_free_bytes=1,
    )


def requested(job: str = JOB) -> ev.GenerationRequested:
    return ev.GenerationRequested(
        job_id=job, user_id="u1", plan=Plan.PRO, tier=Tier.FAST, params=PARAMS
    )


def scheduled(token: int, worker: str, attempt: int = 1) -> ev.JobScheduled:
    return ev.JobScheduled(
        job_id=JOB, worker_id=worker, fencing_token=token, attempt=attempt, tier=Tier.FAST
    )


def generated(token: int, worker: str) -> ev.ImageGenerated:
    img = ev.ImageRef(uri="file:///x.png", sha256=SHA, width=64, height=64)
    return ev.ImageGenerated(job_id=JOB, worker_id=worker, fencing_token=token, images=(img,))


def delivered(n: int) -> ev.ImageDelivered:
    images = tuple(
        ev.DeliveredImage(index=i, url=f"http://x/{i}", sha256=SHA, expires_at=at(3600))
        for i in range(n)
    )
    return ev.ImageDelivered(job_id=JOB, images=images)


def paused(token: int, worker: str) -> ev.GenerationPaused:
    return ev.GenerationPaused(
        job_id=JOB,
        worker_id=worker,
        fencing_token=token,
        steps_done=2,
        total_steps=4,
        state_uri="file:///s",
        state_sha256=SHA,
    )


def failed(token: int | None, reason: ev.FailureReason, terminal: bool) -> ev.GenerationFailed:
    return ev.GenerationFailed(
        job_id=JOB, reason=reason, terminal=terminal, fencing_token=token, worker_id="w"
    )


def fold_of(*events: tuple[Payload, float]) -> UsageFold:
    fold = UsageFold(grace_s=30)
    fold.apply(env(beat("wa", "A10G-24GB"), 0, "wa"), beat("wa", "A10G-24GB"))
    fold.apply(env(beat("wh", "H100-80GB"), 0, "wh"), beat("wh", "H100-80GB"))
    for payload, seconds in events:
        fold.apply(env(payload, seconds), payload)
    return fold


def the_record(fold: UsageFold, now: float) -> UsageRecorded:
    assert fold.due(at(now)) == [JOB]
    return fold.record(JOB)


def test_a_delivered_job_records_its_images_plan_tier_model_and_gpu_seconds() -> None:
    fold = fold_of(
        (requested(), 0),
        (scheduled(1, "wh"), 1),
        (generated(1, "wh"), 4.5),
        (ev.ImageModerated(job_id=JOB, verdict=ev.Verdict.ALLOWED, fencing_token=1), 5),
        (delivered(2), 6),
    )
    r = the_record(fold, 6)
    assert (r.user_id, r.plan, r.tier, r.model) == ("u1", Plan.PRO, Tier.FAST, "m1")
    assert (r.state, r.images, r.images_requested, r.failure_reason) == (
        UsageState.DELIVERED,
        2,
        2,
        None,
    )
    assert r.gpu_seconds == 3.5
    assert r.gpu_seconds_by_class == {"H100-80GB": 3.5}
    assert [(a.worker_id, a.outcome) for a in r.attempts] == [("wh", AttemptOutcome.GENERATED)]
    assert (r.requested_at, r.ended_at) == (at(0), at(6))


def test_a_preempted_job_resumed_on_another_class_counts_both_attempts() -> None:
    fold = fold_of(
        (requested(), 0),
        (scheduled(1, "wa"), 1),
        (paused(1, "wa"), 4),  # 3 s on the A10G, then preempted
        (scheduled(2, "wh"), 10),
        (generated(2, "wh"), 12.25),  # 2.25 s on the H100
        (delivered(2), 13),
    )
    r = the_record(fold, 13)
    assert r.gpu_seconds_by_class == {"A10G-24GB": 3.0, "H100-80GB": 2.25}
    assert r.gpu_seconds == 5.25
    assert [a.outcome for a in r.attempts] == [AttemptOutcome.PAUSED, AttemptOutcome.GENERATED]


def test_a_retry_after_out_of_memory_counts_the_failed_attempt() -> None:
    fold = fold_of(
        (requested(), 0),
        (scheduled(1, "wa"), 1),
        (failed(1, ev.FailureReason.OUT_OF_MEMORY, terminal=False), 3),
        (scheduled(2, "wh", attempt=2), 4),
        (generated(2, "wh"), 5),
        (delivered(2), 6),
    )
    r = the_record(fold, 6)
    assert r.gpu_seconds_by_class == {"A10G-24GB": 2.0, "H100-80GB": 1.0}
    assert [(a.attempt, a.outcome) for a in r.attempts] == [
        (1, AttemptOutcome.FAILED),
        (2, AttemptOutcome.GENERATED),
    ]


def test_retries_exhausted_is_failed_with_every_attempt_counted() -> None:
    fold = fold_of(
        (requested(), 0),
        (scheduled(1, "wa"), 1),
        (failed(1, ev.FailureReason.INTERNAL_ERROR, terminal=False), 2),
        (scheduled(2, "wa", attempt=2), 3),
        (ev.AssignmentRevoked(job_id=JOB, worker_id="wa", fencing_token=2), 8),
        (failed(2, ev.FailureReason.RETRIES_EXHAUSTED, terminal=True), 9),
    )
    r = the_record(fold, 9)
    assert (r.state, r.failure_reason, r.images) == (UsageState.FAILED, "retries_exhausted", 0)
    assert r.gpu_seconds_by_class == {"A10G-24GB": 6.0}
    assert [a.outcome for a in r.attempts] == [AttemptOutcome.FAILED, AttemptOutcome.REVOKED]


def test_a_rejected_prompt_used_no_gpu() -> None:
    fold = fold_of(
        (requested(), 0),
        (ev.PromptModerated(job_id=JOB, verdict=ev.Verdict.REJECTED), 0.5),
    )
    r = the_record(fold, 0.5)
    assert (r.state, r.gpu_seconds, r.gpu_seconds_by_class, r.attempts) == (
        UsageState.PROMPT_REJECTED,
        0.0,
        {},
        (),
    )


def test_a_rejected_image_counts_its_generation_but_no_images() -> None:
    fold = fold_of(
        (requested(), 0),
        (scheduled(1, "wh"), 1),
        (generated(1, "wh"), 3),
        (ev.ImageModerated(job_id=JOB, verdict=ev.Verdict.REJECTED, fencing_token=1), 4),
    )
    r = the_record(fold, 4)
    assert (r.state, r.images, r.gpu_seconds) == (UsageState.IMAGE_REJECTED, 0, 2.0)


def test_a_job_cancelled_while_running_counts_up_to_the_cancellation() -> None:
    fold = fold_of(
        (requested(), 0),
        (scheduled(1, "wh"), 1),
        (ev.CancellationRequested(job_id=JOB, requested_by="u1"), 2),
        (ev.GenerationCancelled(job_id=JOB, at_step=2), 2.5),
    )
    r = the_record(fold, 2.5)
    assert (r.state, r.gpu_seconds) == (UsageState.CANCELLED, 1.5)
    assert [a.outcome for a in r.attempts] == [AttemptOutcome.CANCELLED]


def test_a_job_cancelled_in_the_queue_used_no_gpu() -> None:
    fold = fold_of((requested(), 0), (ev.GenerationCancelled(job_id=JOB), 3))
    r = the_record(fold, 3)
    assert (r.state, r.gpu_seconds, r.attempts) == (UsageState.CANCELLED, 0.0, ())


def test_an_open_attempt_waits_for_the_grace_then_counts_up_to_the_end() -> None:
    fold = fold_of(
        (requested(), 0),
        (scheduled(1, "wh"), 1),
        (failed(1, ev.FailureReason.TIMEOUT, terminal=True), 11),
    )
    assert fold.due(at(11)) == []  # the worker's outcome may still come
    assert fold.due(at(40.9)) == []
    r = the_record(fold, 41)
    assert (r.state, r.failure_reason, r.gpu_seconds) == (UsageState.FAILED, "timeout", 10.0)
    assert [a.outcome for a in r.attempts] == [AttemptOutcome.OPEN]


def test_the_result_read_after_the_delivery_still_counts() -> None:
    """Topics are read in no fixed order between each other: a delivery may come first."""
    fold = fold_of((requested(), 0), (delivered(1), 6))
    assert fold.due(at(6)) == []  # no attempt made the images yet
    fold.apply(env(generated(1, "wh"), 5), generated(1, "wh"))  # result before assignment
    assert fold.due(at(6)) == []
    fold.apply(env(scheduled(1, "wh"), 2), scheduled(1, "wh"))
    r = the_record(fold, 6)
    assert (r.images, r.gpu_seconds) == (1, 3.0)


def test_an_unknown_worker_class_is_named_unknown() -> None:
    fold = fold_of((requested(), 0), (scheduled(1, "wz"), 1), (generated(1, "wz"), 2))
    fold.apply(env(delivered(1), 3), delivered(1))
    assert the_record(fold, 3).gpu_seconds_by_class == {"unknown": 1.0}


def test_an_ended_job_without_its_request_is_not_recorded_until_the_request_comes() -> None:
    fold = fold_of((ev.GenerationCancelled(job_id=JOB), 3))
    assert fold.due(at(100)) == []
    fold.apply(env(requested(), 0), requested())
    assert the_record(fold, 100).state is UsageState.CANCELLED


def test_duplicate_events_change_nothing() -> None:
    events: list[tuple[Payload, float]] = [
        (requested(), 0),
        (scheduled(1, "wa"), 1),
        (paused(1, "wa"), 4),
        (scheduled(2, "wh"), 10),
        (generated(2, "wh"), 12),
        (delivered(2), 13),
    ]
    once = the_record(fold_of(*events), 13)
    # Every event read twice, the second copy (a redelivery) stamped later.
    twice = the_record(fold_of(*events, *[(p, s + 50) for p, s in events]), 13)
    assert twice == once


def test_a_recorded_job_is_never_due_again_and_its_late_events_are_ignored() -> None:
    fold = fold_of((requested(), 0), (ev.GenerationCancelled(job_id=JOB), 1))
    record = the_record(fold, 1)
    fold.apply(env(record, 2, "u1"), record)  # read back from the usage topic
    fold.apply(env(scheduled(3, "wh"), 3), scheduled(3, "wh"))
    assert fold.due(at(1000)) == [] and JOB not in fold.jobs


async def test_the_meter_publishes_once_keyed_by_user_with_an_id_from_the_job() -> None:
    pub = InMemoryPublisher()
    meter = UsageMeter(pub, clock=lambda: at(100))
    events: list[tuple[Payload, float]] = [
        (requested(), 0),
        (scheduled(1, "wh"), 1),
        (generated(1, "wh"), 2),
        (delivered(2), 3),
    ]
    for payload, seconds in events:
        await meter.on_event(env(payload, seconds), payload, None, True)
    await meter.flush()
    await meter.flush()
    [out] = pub.on("imagegen.usage")
    assert out.event_id == usage_event_id(JOB)
    assert [r.key for r in pub.records] == [b"u1"]
    assert out.data["state"] == "delivered" and out.data["images"] == 2

    # A restarted meter replays the topics: with the record among them, it publishes nothing.
    again = InMemoryPublisher()
    replayed = UsageMeter(again, clock=lambda: at(200))
    for payload, seconds in events:
        await replayed.on_event(env(payload, seconds), payload, None, False)
    record = UsageRecorded.model_validate(out.data)
    await replayed.on_event(out, record, None, False)
    await replayed.flush()
    assert again.records == []

    # Without it (the meter crashed before its record was acknowledged), it publishes the same
    # record under the same event id, which readers would drop were it a duplicate.
    lost = InMemoryPublisher()
    recovering = UsageMeter(lost, clock=lambda: at(200))
    for payload, seconds in events:
        await recovering.on_event(env(payload, seconds), payload, None, False)
    await recovering.flush()
    [redone] = lost.on("imagegen.usage")
    assert (redone.event_id, redone.data) == (out.event_id, out.data)


def test_an_outcome_read_before_its_assignment_holds_the_record_until_it_comes() -> None:
    fold = fold_of(
        (requested(), 0),
        (scheduled(1, "wa"), 1),
        (failed(1, ev.FailureReason.OUT_OF_MEMORY, terminal=False), 2),
        (failed(2, ev.FailureReason.OUT_OF_MEMORY, terminal=False), 6),  # its JobScheduled lags
        (failed(2, ev.FailureReason.RETRIES_EXHAUSTED, terminal=True), 7),
    )
    assert fold.due(at(7)) == []
    fold.apply(env(scheduled(2, "wh", attempt=2), 3), scheduled(2, "wh", attempt=2))
    r = the_record(fold, 7)
    assert r.gpu_seconds_by_class == {"A10G-24GB": 1.0, "H100-80GB": 3.0}
