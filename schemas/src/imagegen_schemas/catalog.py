"""The topic catalog: every topic, its partitioning key, retention and the events it carries.

Topics are created from this catalog by ``imagegen topics create`` (see ``imagegen_runtime.kafka``)
with explicit partitions and configs, never by broker auto-creation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import jobs, usage, webhooks, workers
from .envelope import Payload

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str  # full Kafka topic name
    key: str  # what the record key is: "job_id" or "worker_id"
    partitions: int  # fixed at creation; the key's hash picks the partition
    retention_ms: int  # -1 = forever (the log is the source of truth)
    compacted: bool  # cleanup.policy=compact: keeps the latest record per key (state topics)
    events: tuple[type[Payload], ...]  # the payload types published here
    description: str = ""
    configs: dict[str, str] = field(default_factory=dict)  # extra topic configs

    def kafka_configs(self) -> dict[str, str]:
        """Topic configs passed at creation."""
        base = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
            "min.insync.replicas": "1",
        }
        return {**base, **self.configs}


JOB_PARTITIONS = 6

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "imagegen.jobs.requested",
        "job_id",
        JOB_PARTITIONS,
        -1,
        False,
        (jobs.GenerationRequested, jobs.CancellationRequested),
        "Accepted requests and cancellation requests. Kept forever: replay starts here.",
    ),
    TopicSpec(
        "imagegen.jobs.moderated",
        "job_id",
        JOB_PARTITIONS,
        -1,
        False,
        (jobs.PromptModerated, jobs.ImageModerated),
        "Safety verdicts on prompts (before scheduling) and on images (after generation).",
    ),
    TopicSpec(
        "imagegen.jobs.scheduled",
        "job_id",
        JOB_PARTITIONS,
        -1,
        False,
        (jobs.JobScheduled, jobs.PreemptionRequested),
        "Assignments of jobs to workers, with fencing tokens, and requests to pause them.",
    ),
    TopicSpec(
        "imagegen.jobs.progress",
        "job_id",
        JOB_PARTITIONS,
        3 * DAY_MS,
        False,
        (jobs.GenerationStarted, jobs.StepProgressed, jobs.WaitEstimated),
        "Started and step progress with previews, and the scheduler's wait estimates of queued"
        " jobs. High volume, short retention.",
    ),
    TopicSpec(
        "imagegen.jobs.generated",
        "job_id",
        JOB_PARTITIONS,
        -1,
        False,
        (jobs.ImageGenerated, jobs.GenerationPaused, jobs.AssignmentRevoked),
        "Finished generations (storage URIs, digests, timings), paused generations (saved"
        " state) and revoked assignments.",
    ),
    TopicSpec(
        "imagegen.jobs.delivered",
        "job_id",
        JOB_PARTITIONS,
        -1,
        False,
        (jobs.ImageDelivered,),
        "Delivered images: signed URLs and webhook outcome.",
    ),
    TopicSpec(
        "imagegen.jobs.ended",
        "job_id",
        JOB_PARTITIONS,
        -1,
        False,
        (jobs.GenerationFailed, jobs.GenerationCancelled),
        "Failures (per attempt and terminal) and cancellations.",
    ),
    TopicSpec(
        "imagegen.usage",
        "user_id",
        JOB_PARTITIONS,
        -1,
        False,
        (usage.UsageRecorded,),
        "One usage record per ended job (GPU seconds by worker class, images, tier, plan), keyed"
        " by user. Kept forever: billing and analytics read it (docs/usage.md).",
    ),
    TopicSpec(
        "imagegen.workers.heartbeats",
        "worker_id",
        3,
        7 * DAY_MS,
        True,
        (workers.WorkerHeartbeat,),
        "Latest state per worker (compacted).",
        {"segment.ms": str(60 * 60 * 1000), "min.cleanable.dirty.ratio": "0.1"},
    ),
    TopicSpec(
        "imagegen.workers.models",
        "worker_id",
        3,
        30 * DAY_MS,
        False,
        (
            workers.ModelLoaded,
            workers.ModelEvicted,
            workers.ModelCorrupted,
            workers.ModelLoadFailed,
        ),
        "Model residency facts per worker.",
    ),
    TopicSpec(
        "imagegen.pool.commands",
        "worker_id",
        3,
        7 * DAY_MS,
        False,
        (workers.LoadModel, workers.EvictModel, workers.DefragmentMemory),
        "Commands from the pool-manager to workers.",
    ),
    TopicSpec(
        "imagegen.pool.signals",
        "pool",
        1,
        7 * DAY_MS,
        False,
        (workers.AutoscaleRecommended,),
        "The pool-manager's autoscaling signal per pool (desired workers).",
    ),
    TopicSpec(
        "imagegen.deadletter",
        "source",
        3,
        30 * DAY_MS,
        False,
        (workers.DeadLettered,),
        "Records a consumer could not process, with the error and the original bytes.",
    ),
    TopicSpec(
        "imagegen.deadletter.redrives",
        "letter_id",
        1,
        30 * DAY_MS,
        False,
        (workers.DeadLetterRedriven,),
        "Dead letters republished to their source topic by `imagegen dlq redrive` (docs/dlq.md).",
    ),
    TopicSpec(
        "imagegen.webhooks.retry",
        "job_id",
        JOB_PARTITIONS,
        3 * DAY_MS,
        False,
        (webhooks.WebhookScheduled,),
        "Webhook attempts with their due time: the first call and every retry (docs/adr/0403).",
    ),
    TopicSpec(
        "imagegen.webhooks.deadletter",
        "job_id",
        3,
        30 * DAY_MS,
        False,
        (webhooks.WebhookDeadLettered,),
        "Webhook calls that ran out of attempts or were refused; `imagegen webhooks redeliver`.",
    ),
)

TOPIC_BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}


def topic_for(payload_type: type[Payload]) -> str:
    """The topic a payload type is published to."""
    for spec in TOPICS:
        if payload_type in spec.events:
            return spec.name
    raise KeyError(f"{payload_type.__name__} is in no topic of the catalog")
