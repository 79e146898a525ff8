"""One realistic example payload per event type; used once to write the golden files.

Goldens in ``schemas/examples/`` are frozen once published: ``make_goldens`` only writes missing
ones, so an incompatible model change shows up as a failing golden test, not a rewritten golden.
"""

from __future__ import annotations

from datetime import UTC, datetime

from imagegen_schemas import jobs, usage, webhooks, workers
from imagegen_schemas.common import ControlNetSpec, GenerationParams, ImageRef, LoraSpec, Plan, Tier
from imagegen_schemas.envelope import Envelope, Payload

JOB = "0b7f1c9e-5d1a-4e6b-9a55-3f2f4f0c7a11"
WORKER = "worker-h100-01"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
WEBHOOK_BODY = (
    '{"data":{"reason":"out_of_memory"},"job_id":"' + JOB + '","type":"generation.failed"}'
)

PARAMS = GenerationParams(
    prompt="a red circle on a blue background",
    negative_prompt="green",
    model="shapes-demo",
    width=64,
    height=64,
    steps=25,
    guidance_scale=5.0,
    scheduler="ddim",
    seed=42,
    num_images=1,
    loras=(LoraSpec(name="watercolor", weight=0.8),),
    controlnets=(
        ControlNetSpec(
            type="canny",
            image_uri="file:///tmp/edges.png",
            weight=0.5,
            start_percent=0.0,
            end_percent=0.7,
        ),
    ),
)

EXAMPLES: list[Payload] = [
    jobs.GenerationRequested(
        job_id=JOB,
        user_id="user-1",
        plan=Plan.PRO,
        tier=Tier.FAST,
        params=PARAMS,
        webhook_url="https://example.com/hook",
        idempotency_key="req-123",
    ),
    jobs.CancellationRequested(job_id=JOB, requested_by="user-1"),
    jobs.PromptModerated(
        job_id=JOB,
        verdict=jobs.Verdict.ALLOWED,
        categories=(),
        scores={"sexual": 0.01, "violence": 0.02},
        checker="minilm-v1",
    ),
    jobs.ImageModerated(
        job_id=JOB,
        verdict=jobs.Verdict.ALLOWED,
        per_image=(jobs.Verdict.ALLOWED,),
        scores={"nsfw": 0.03},
        checker="opennsfw-0.1.0",
    ),
    jobs.JobScheduled(
        job_id=JOB, worker_id=WORKER, fencing_token=7, attempt=1, tier=Tier.FAST, queued_for_ms=120
    ),
    jobs.PreemptionRequested(
        job_id=JOB,
        worker_id=WORKER,
        fencing_token=7,
        reason="turbo job t-1 would wait past 15s",
        for_job_id="t-1",
    ),
    jobs.GenerationPaused(
        job_id=JOB,
        worker_id=WORKER,
        fencing_token=7,
        steps_done=10,
        total_steps=25,
        state_uri=f"file:///var/blobs/{JOB}/7-paused-10.pt",
        state_sha256=SHA,
    ),
    jobs.GenerationStarted(job_id=JOB, worker_id=WORKER, fencing_token=7, model_load_ms=0),
    jobs.WaitEstimated(job_id=JOB, eta_s=42.5, queue_position=3),
    jobs.StepProgressed(
        job_id=JOB,
        worker_id=WORKER,
        fencing_token=7,
        step=10,
        total_steps=25,
        preview_png_b64="iVBORw0KGgo=",
    ),
    jobs.ImageGenerated(
        job_id=JOB,
        worker_id=WORKER,
        fencing_token=7,
        images=(
            ImageRef(
                uri=f"file:///var/blobs/{JOB}/0.png", sha256=SHA, width=64, height=64, index=0
            ),
        ),
        timings_ms={"load": 0.0, "denoise": 812.5, "decode": 20.1, "upload": 3.2},
    ),
    jobs.AssignmentRevoked(
        job_id=JOB, worker_id=WORKER, fencing_token=7, reason="no heartbeat for 10s"
    ),
    jobs.ImageDelivered(
        job_id=JOB,
        images=(
            jobs.DeliveredImage(
                index=0,
                url=f"http://127.0.0.1:8000/v1/files/{JOB}/0.png?exp=1&sig=ab",
                sha256=SHA,
                expires_at=datetime(2026, 11, 28, 10, 0, tzinfo=UTC),
            ),
        ),
        webhook_status=200,
    ),
    jobs.GenerationFailed(
        job_id=JOB,
        reason=jobs.FailureReason.OUT_OF_MEMORY,
        message="CUDA out of memory",
        attempt=1,
        terminal=False,
        worker_id=WORKER,
    ),
    jobs.GenerationCancelled(job_id=JOB, at_step=12),
    workers.WorkerHeartbeat(
        worker_id=WORKER,
        status=workers.WorkerStatus.BUSY,
        gpu_type="H100-80GB",
        memory_total_bytes=80 * 2**30,
        memory_free_bytes=30 * 2**30,
        largest_free_block_bytes=20 * 2**30,
        loaded=(workers.LoadedModel(model_id="sdxl-base", bytes=10 * 2**30),),
        running_job_id=JOB,
        capabilities=("sd15", "sdxl"),
        interval_s=2.0,
    ),
    workers.ModelLoaded(
        worker_id=WORKER,
        model=workers.LoadedModel(model_id="sdxl-base", bytes=10 * 2**30),
        load_ms=9500.0,
    ),
    workers.ModelEvicted(worker_id=WORKER, model_id="sd3-medium", reason="eviction_score"),
    workers.ModelLoadFailed(
        worker_id=WORKER,
        model_id="flux-dev",
        reason="does_not_fit",
        message="needs 24.0 GB beside the pinned models, the budget leaves 12.5 GB",
        command_id="0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
    ),
    workers.ModelCorrupted(
        worker_id=WORKER,
        model_id="sdxl-base",
        file="unet/model.safetensors",
        expected_sha256=SHA,
        actual_sha256="0" * 64,
    ),
    workers.LoadModel(worker_id=WORKER, model_id="flux-schnell", reason="predicted_demand"),
    workers.EvictModel(worker_id=WORKER, model_id="sd3-medium", reason="memory_pressure"),
    workers.DefragmentMemory(worker_id=WORKER, reason="largest_free_block_ratio<0.7"),
    workers.AutoscaleRecommended(
        pool="H100-80GB",
        desired_workers=14,
        current_workers=10,
        queued_jobs=240,
        oldest_wait_s=48.5,
        reason="fast p95 wait over its goal",
    ),
    workers.DeadLettered(
        source_topic="imagegen.jobs.requested",
        source_partition=0,
        source_offset=41,
        consumer_group="imagegen-scheduler",
        error="ValidationError: ...",
        original_key_b64=None,
        original_value_b64="bm90IGpzb24=",
    ),
    workers.DeadLetterRedriven(
        letter_id="33333333-2222-4333-8444-555555555555",
        source_topic="imagegen.jobs.requested",
        source_partition=0,
        source_offset=41,
        consumer_group="imagegen-scheduler",
        redriven_partition=0,
        redriven_offset=97,
        redrive=1,
        by="igk_a1b2c3d4",
    ),
    usage.UsageRecorded(
        job_id=JOB,
        user_id="user-42",
        plan=Plan.PRO,
        tier=Tier.FAST,
        model="shapes-demo",
        state=usage.UsageState.DELIVERED,
        images_requested=1,
        images=1,
        gpu_seconds=7.25,
        gpu_seconds_by_class={"A10G-24GB": 3.0, "H100-80GB": 4.25},
        attempts=(
            usage.AttemptUsage(
                fencing_token=7,
                attempt=1,
                worker_id="worker-a10g-03",
                worker_class="A10G-24GB",
                outcome=usage.AttemptOutcome.PAUSED,
                gpu_seconds=3.0,
            ),
            usage.AttemptUsage(
                fencing_token=9,
                attempt=1,
                worker_id=WORKER,
                worker_class="H100-80GB",
                outcome=usage.AttemptOutcome.GENERATED,
                gpu_seconds=4.25,
            ),
        ),
        requested_at=T0,
        ended_at=datetime(2026, 11, 27, 10, 0, 9, tzinfo=UTC),
    ),
    webhooks.WebhookScheduled(
        message_id="44444444-2222-4333-8444-555555555555",
        job_id=JOB,
        user_id="user-1",
        url="https://hooks.example.com/imagegen",
        webhook_type="generation.failed",
        body=WEBHOOK_BODY,
        attempt=2,
        due_at=datetime(2026, 11, 27, 10, 0, 5, tzinfo=UTC),
        last_status=503,
        last_error="answered 503",
    ),
    webhooks.WebhookDeadLettered(
        message_id="44444444-2222-4333-8444-555555555555",
        job_id=JOB,
        user_id="user-1",
        url="https://hooks.example.com/imagegen",
        webhook_type="generation.failed",
        body=WEBHOOK_BODY,
        attempts=7,
        last_status=503,
        reason="answered 503",
    ),
]


def envelope_for(payload: Payload) -> Envelope:
    corr = (
        getattr(payload, "job_id", None)
        or getattr(payload, "worker_id", None)
        or getattr(payload, "pool", None)
        or "deadletter"
    )
    return Envelope.wrap(
        payload,
        correlation_id=corr,
        producer="examples",
        occurred_at=T0,
        event_id="11111111-2222-4333-8444-555555555555",
        causation_id="00000000-0000-4000-8000-000000000000",
    )
