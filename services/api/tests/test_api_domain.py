"""The api's pure parts: request checks against catalog and plan; the job fold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imagegen_api.domain.job import JobView, evolve, stage_timings
from imagegen_api.domain.plans import PLANS
from imagegen_api.domain.validation import AdapterInfo, Catalog, ModelInfo, check_request
from imagegen_schemas import Envelope, GenerationParams, ImageRef, Plan, Tier
from imagegen_schemas import jobs as ev

pytestmark = pytest.mark.unit
CATALOG = Catalog(models={"m": ModelInfo("m", "sd15", 64, 256, 64)}, loras=frozenset({"ink"}))


def check(**kw):  # type: ignore[no-untyped-def]
    args = dict(
        model="m",
        width=64,
        height=64,
        scheduler="ddim",
        num_images=1,
        loras=[],
        controlnets=[],
        catalog=CATALOG,
        limits=PLANS[Plan.FREE],
    )
    return check_request(**{**args, **kw})


def test_a_good_request_has_no_problem() -> None:
    assert check() == []


@pytest.mark.parametrize(
    ("kw", "field", "words"),
    [
        ({"model": "x"}, ("model",), "unknown model"),
        ({"width": 65}, ("width",), "multiple of 8"),
        ({"height": 512}, ("height",), "within 64..256"),
        ({"width": 56}, ("width",), "within 64..256"),
        ({"scheduler": "magic"}, ("scheduler",), "unknown scheduler"),
        ({"loras": ["ink", "ink"]}, ("loras",), "at most 1"),
        ({"loras": ["nope"]}, ("loras", 0, "name"), "unknown LoRA"),
        ({"controlnets": ["canny"]}, ("controlnets", 0, "type"), "unknown ControlNet"),
        ({"num_images": 3}, ("num_images",), "at most 2"),
    ],
)
def test_each_bound_names_the_field_and_reason(kw, field, words) -> None:  # type: ignore[no-untyped-def]
    problems = check(**kw)
    assert any(loc == field and words in msg for loc, msg in problems), problems


def test_pro_plan_allows_three_loras() -> None:
    assert check(loras=["ink"] * 3, limits=PLANS[Plan.PRO]) == []
    assert check(loras=["ink"] * 4, limits=PLANS[Plan.PRO])[0][0] == ("loras",)


T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARAMS = GenerationParams(
    prompt="p", model="m", width=64, height=64, steps=4, guidance_scale=5, seed=1
)


def fold(*payloads: ev.Payload) -> JobView:
    job = JobView(job_id="j")
    for i, p in enumerate(payloads):
        env = Envelope.wrap(
            p, correlation_id="j", producer="t", occurred_at=T0 + timedelta(milliseconds=100 * i)
        )
        job = evolve(job, env, p)
    return job


REQ = ev.GenerationRequested(job_id="j", user_id="u", plan=Plan.PRO, tier=Tier.FAST, params=PARAMS)
OK = ev.PromptModerated(job_id="j", verdict=ev.Verdict.ALLOWED)
SCHED1 = ev.JobScheduled(job_id="j", worker_id="w1", fencing_token=1, tier=Tier.FAST)
SCHED2 = ev.JobScheduled(job_id="j", worker_id="w2", fencing_token=2, attempt=2, tier=Tier.FAST)
IMG = ImageRef(uri="file:///x.png", sha256="0" * 64, width=64, height=64)


def test_happy_path_reaches_delivered_with_stage_timings() -> None:
    job = fold(
        REQ,
        OK,
        SCHED1,
        ev.GenerationStarted(job_id="j", worker_id="w1", fencing_token=1),
        ev.StepProgressed(job_id="j", worker_id="w1", fencing_token=1, step=2, total_steps=4),
        ev.ImageGenerated(job_id="j", worker_id="w1", fencing_token=1, images=(IMG,)),
        ev.ImageModerated(job_id="j", verdict=ev.Verdict.ALLOWED, fencing_token=1),
        ev.ImageDelivered(
            job_id="j",
            images=(ev.DeliveredImage(index=0, url="http://x", sha256="0" * 64, expires_at=T0),),
        ),
    )
    assert job.status == "delivered" and job.images[0]["url"] == "http://x"
    assert stage_timings(job)["total"] == pytest.approx(700)


def test_late_result_of_a_revoked_assignment_is_ignored() -> None:
    job = fold(
        REQ,
        OK,
        SCHED1,
        SCHED2,
        ev.ImageGenerated(job_id="j", worker_id="w1", fencing_token=1, images=(IMG,)),
    )
    assert job.status == "scheduled" and job.worker_id == "w2"


def test_rejected_prompt_fails_with_category_and_nothing_moves_it() -> None:
    job = fold(
        REQ,
        ev.PromptModerated(job_id="j", verdict=ev.Verdict.REJECTED, categories=("violence",)),
        SCHED1,
    )
    assert job.status == "failed" and job.categories == ("violence",)
    assert job.failure_reason == "prompt_rejected"


def test_events_from_other_topics_may_arrive_first() -> None:
    job = fold(OK, REQ)
    assert job.status == "queued" and job.user_id == "u"


TOPIC_OF = {
    ev.GenerationRequested: "requested",
    ev.PromptModerated: "moderated",
    ev.ImageModerated: "moderated",
    ev.JobScheduled: "scheduled",
    ev.GenerationStarted: "progress",
    ev.StepProgressed: "progress",
    ev.ImageGenerated: "generated",
    ev.ImageDelivered: "delivered",
    ev.GenerationFailed: "ended",
}
LIFE = [
    REQ,
    OK,
    SCHED1,
    ev.GenerationStarted(job_id="j", worker_id="w1", fencing_token=1),
    ev.StepProgressed(job_id="j", worker_id="w1", fencing_token=1, step=1, total_steps=2),
    ev.GenerationFailed(job_id="j", reason=ev.FailureReason.WORKER_LOST, attempt=1, terminal=False),
    SCHED2,
    ev.GenerationStarted(job_id="j", worker_id="w2", fencing_token=2),
    ev.StepProgressed(job_id="j", worker_id="w2", fencing_token=2, step=2, total_steps=2),
    ev.ImageGenerated(job_id="j", worker_id="w2", fencing_token=2, images=(IMG,)),
    ev.ImageGenerated(job_id="j", worker_id="w1", fencing_token=1, images=(IMG,)),  # late
    ev.ImageModerated(job_id="j", verdict=ev.Verdict.ALLOWED, fencing_token=2),
    ev.ImageDelivered(job_id="j", images=()),
]


def test_interleaving_of_topics_does_not_change_the_projection() -> None:
    """Per-topic order is kept by Kafka; across topics any interleaving may happen."""
    import random

    envs = [
        Envelope.wrap(
            p, correlation_id="j", producer="t", occurred_at=T0 + timedelta(milliseconds=10 * i)
        )
        for i, p in enumerate(LIFE)
    ]
    streams: dict[str, list[tuple[Envelope, ev.Payload]]] = {}
    for env, p in zip(envs, LIFE, strict=True):
        streams.setdefault(TOPIC_OF[type(p)], []).append((env, p))
    finals = set()
    rng = random.Random(7)
    for _ in range(200):
        queues = {k: list(v) for k, v in streams.items()}
        job = JobView(job_id="j")
        while queues:
            topic = rng.choice(sorted(queues))
            env, p = queues[topic].pop(0)
            job = evolve(job, env, p)
            if not queues[topic]:
                del queues[topic]
        finals.add(
            (
                job.status,
                job.fencing_token,
                job.attempt,
                job.updated_at,
                tuple(sorted(job.stamps.items())),
            )
        )
    assert len(finals) == 1, finals
    assert next(iter(finals))[0] == "delivered"


def test_a_paused_job_reads_as_queued_with_its_progress_and_then_runs_again() -> None:
    pause = ev.GenerationPaused(
        job_id="j",
        worker_id="w1",
        fencing_token=1,
        steps_done=3,
        total_steps=4,
        state_uri="file:///s",
        state_sha256="0" * 64,
    )
    job = fold(
        REQ, OK, SCHED1, ev.GenerationStarted(job_id="j", worker_id="w1", fencing_token=1), pause
    )
    assert (job.status, job.step, job.failure_reason) == ("queued", 3, None)
    resumed = ev.JobScheduled(
        job_id="j",
        worker_id="w2",
        fencing_token=2,
        tier=Tier.FAST,
        resume=ev.ResumeFrom(steps_done=3, state_uri="file:///s", state_sha256="0" * 64),
    )
    assert fold(REQ, OK, SCHED1, pause, resumed).status == "scheduled"
    assert fold(REQ, OK, SCHED1, resumed, pause).status == "scheduled"  # a late pause: ignored


FAMILIES = Catalog(
    models={"m": ModelInfo("m", "sd15", 64, 256, 64), "x": ModelInfo("x", "sdxl", 64, 1024, 64)},
    loras=frozenset({"ink", "xl-ink"}),
    controlnets=frozenset({"canny", "depth"}),
    adapters=(
        AdapterInfo("ink", "lora", "sd15"),
        AdapterInfo("xl-ink", "lora", "sdxl"),
        AdapterInfo("sd15-canny", "controlnet", "sd15", controlnet_type="canny"),
        AdapterInfo("sdxl-depth", "controlnet", "sdxl", controlnet_type="depth"),
    ),
)


def test_an_adapter_for_another_family_is_refused_by_name() -> None:
    pro = PLANS[Plan.PRO]
    assert check(catalog=FAMILIES, loras=["ink"], controlnets=["canny"], limits=pro) == []
    assert check(catalog=FAMILIES, loras=["xl-ink"], limits=pro) == [
        (("loras", 0, "name"), "LoRA 'xl-ink' is for sdxl models; model 'm' is sd15")
    ]
    assert check(catalog=FAMILIES, controlnets=["depth"], limits=pro) == [
        (("controlnets", 0, "type"), "no depth ControlNet for sd15 models (registered for: sdxl)")
    ]
    assert check(catalog=FAMILIES, model="x", loras=["xl-ink"], controlnets=["depth"]) == []
