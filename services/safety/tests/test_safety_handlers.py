"""Given an event, when the safety service handles it, then these events (fakes, in memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from safety_testkit import BENIGN, envelope_of, generated, png, requested, sha, store

from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import InMemoryPublisher, derived_event_id
from imagegen_safety.adapters.blobs import BlobIntegrityError
from imagegen_safety.adapters.classifiers import UnreadableImage
from imagegen_safety.adapters.fakes import (
    FakeImageClassifier,
    FakePromptClassifier,
    InMemoryRevocationLog,
)
from imagegen_safety.config import GENERATED, REQUESTED, SafetySettings
from imagegen_safety.domain.policy import CATEGORIES
from imagegen_safety.service_layer.handlers import make_handler
from imagegen_safety.service_layer.revocations import Revocations
from imagegen_schemas import Envelope, Payload, parse
from imagegen_schemas.jobs import (
    AssignmentRevoked,
    ImageGenerated,
    ImageModerated,
    PromptModerated,
    Verdict,
)

pytestmark = pytest.mark.unit

MODERATED = "imagegen.jobs.moderated"


class World:
    """One safety process over an in-memory log, an in-memory publisher and fake classifiers.

    ``handle`` writes the event to its topic's partition 0 and hands this process the record;
    ``write`` only writes it (another process, or none, handled it); ``restart`` is a new
    process over the same log.
    """

    def __init__(
        self,
        settings: SafetySettings,
        log: InMemoryRevocationLog | None = None,
        **fakes: object,
    ) -> None:
        self.settings = settings
        self.log = log or InMemoryRevocationLog()
        self.publisher = InMemoryPublisher(producer="safety-1")
        self.prompts = fakes.get("prompts") or FakePromptClassifier()
        self.images = fakes.get("images") or FakeImageClassifier()
        self.handler = make_handler(
            self.publisher,
            self.prompts,  # type: ignore[arg-type]
            self.images,  # type: ignore[arg-type]
            settings,
            Revocations(self.log),
        )

    def write(self, envelope: Envelope) -> RecordMeta:
        payload = parse(envelope)
        topic = GENERATED if isinstance(payload, ImageGenerated | AssignmentRevoked) else REQUESTED
        return self.log.append(topic, envelope)

    async def handle(self, envelope: Envelope) -> RecordMeta:
        meta = self.write(envelope)
        await self.handler(envelope, parse(envelope), meta)
        return meta

    def restart(self) -> World:
        return World(self.settings, self.log, prompts=self.prompts, images=self.images)

    def published(self) -> list[tuple[Envelope, Payload]]:
        return [(r.envelope, parse(r.envelope)) for r in self.publisher.records]


@pytest.fixture
def world(settings: SafetySettings) -> World:
    return World(settings)


def observed(kind: str) -> float:
    return REGISTRY.get_sample_value("imagegen_safety_check_seconds_count", {"kind": kind}) or 0.0


async def test_a_late_result_of_a_revoked_assignment_gets_no_verdict(
    world: World, tmp_path: Path
) -> None:
    refs = store(tmp_path, "job-1", [png()])
    await world.handle(
        envelope_of(AssignmentRevoked(job_id="job-1", worker_id="worker-1", fencing_token=3))
    )
    await world.handle(envelope_of(generated(refs)))  # token 3: the revoked one
    assert world.published() == []
    newer = generated(refs).model_copy(update={"fencing_token": 4})
    await world.handle(envelope_of(newer))
    assert len(world.published()) == 1


async def test_a_restart_between_a_revocation_and_the_late_image_still_drops_it(
    world: World, tmp_path: Path
) -> None:
    """The chaos soak's case: the revocation was handled and committed, then safety restarted."""
    refs = store(tmp_path, "job-1", [png()])
    revoked = AssignmentRevoked(job_id="job-1", worker_id="worker-1", fencing_token=3)
    await world.handle(envelope_of(revoked))
    successor = world.restart()
    await successor.handle(envelope_of(generated(refs)))  # token 3: the revoked one
    assert successor.published() == []
    await successor.handle(envelope_of(generated(refs).model_copy(update={"fencing_token": 4})))
    [(_, verdict)] = successor.published()
    assert isinstance(verdict, ImageModerated) and verdict.fencing_token == 4
    assert successor.log.reads == [(GENERATED, 0, 0, 1)]  # once, up to the record in hand


async def test_a_process_given_a_partition_midway_reads_only_what_it_skipped(
    world: World, tmp_path: Path
) -> None:
    """A rebalance: another member handled offsets 0-2 of the partition, this one takes over."""
    refs = store(tmp_path, "job-1", [png()])
    await world.handle(envelope_of(generated(refs, job_id="job-0")))  # offset 0, this process
    world.write(envelope_of(generated(refs, job_id="job-9")))  # offset 1, another member
    world.write(envelope_of(AssignmentRevoked(job_id="job-1", worker_id="w", fencing_token=3)))
    await world.handle(envelope_of(generated(refs)))  # offset 3: job-1's revoked token 3
    await world.handle(envelope_of(generated(refs, job_id="job-2")))  # offset 4, in order
    assert [v.job_id for _, v in world.published()] == ["job-0", "job-2"]  # type: ignore[attr-defined]
    assert world.log.reads == [(GENERATED, 0, 1, 3)]


async def test_a_revocation_after_the_image_in_the_log_does_not_make_it_stale(
    world: World, tmp_path: Path
) -> None:
    """Log order decides, as for every decider: the image came first, so it stands."""
    refs = store(tmp_path, "job-1", [png()])
    world.write(envelope_of(generated(refs)))  # offset 0: token 3's image, not yet handled
    world.write(envelope_of(AssignmentRevoked(job_id="job-1", worker_id="w", fencing_token=3)))
    await world.handle(envelope_of(generated(refs, job_id="job-2")))  # reads offsets 0-1
    await world.handler(*redelivered(world, 0))  # a new member handles offset 0 again
    assert sorted(v.job_id for _, v in world.published()) == ["job-1", "job-2"]  # type: ignore[attr-defined]


async def test_requested_records_read_no_revocations(world: World) -> None:
    await world.handle(envelope_of(requested("job-1")))
    await world.handle(envelope_of(requested("job-2")))
    assert world.log.reads == []


def redelivered(world: World, offset: int) -> tuple[Envelope, Payload, RecordMeta]:
    """The record at ``offset`` of the generated partition, as a consumer would get it again."""
    envelope = Envelope.from_json(world.log.partitions[(GENERATED, 0)][offset])
    meta = RecordMeta(GENERATED, 0, offset, envelope.correlation_id, {"ce_type": envelope.type})
    return envelope, parse(envelope), meta


async def test_a_benign_prompt_is_allowed(world: World) -> None:
    cause = envelope_of(requested("job-1", BENIGN))
    await world.handle(cause)
    [(env, event)] = world.published()
    assert event == PromptModerated(
        job_id="job-1",
        verdict=Verdict.ALLOWED,
        categories=(),
        scores=dict.fromkeys(CATEGORIES, 0.01),
        checker="fake-prompt-classifier 1",
    )
    assert world.publisher.records[0].topic == MODERATED
    assert world.publisher.records[0].key == b"job-1"
    assert env.causation_id == cause.event_id
    assert env.correlation_id == "job-1"
    assert env.event_id == derived_event_id(cause.event_id, PromptModerated.event_type)


async def test_an_abusive_prompt_is_rejected_with_its_categories(world: World) -> None:
    await world.handle(envelope_of(requested("job-2", "a nazi flag, fuck you")))
    [(_, event)] = world.published()
    assert isinstance(event, PromptModerated)
    assert event.verdict == Verdict.REJECTED
    assert event.categories == ("hate", "profanity")
    assert event.scores["hate"] == 0.99


async def test_a_redelivered_request_publishes_the_same_event_again(world: World) -> None:
    cause = envelope_of(requested("job-1", "naked woman, explicit"))
    await world.handle(cause)
    await world.handle(cause)
    (first, a), (second, b) = world.published()
    assert first.event_id == second.event_id  # downstream drops the duplicate by id
    assert a == b


async def test_only_the_prompt_is_judged_not_the_negative_prompt(settings: SafetySettings) -> None:
    prompts = FakePromptClassifier()
    world = World(settings, prompts=prompts)
    await world.handle(envelope_of(requested("job-1", BENIGN, negative="nsfw, nude, gore")))
    [(_, event)] = world.published()
    assert isinstance(event, PromptModerated)
    assert event.verdict == Verdict.ALLOWED
    assert prompts.calls == [BENIGN]


async def test_settings_thresholds_decide(settings: SafetySettings) -> None:
    prompts = FakePromptClassifier(overrides={"borderline": {"violence": 0.6}})
    strict = World(settings, prompts=prompts)
    lenient = World(settings.model_copy(update={"prompt_threshold_violence": 0.7}), prompts=prompts)
    for world in (strict, lenient):
        await world.handle(envelope_of(requested("job-1", "borderline")))
    assert [e.verdict for w in (strict, lenient) for _, e in w.published()] == [  # type: ignore[attr-defined]
        Verdict.REJECTED,
        Verdict.ALLOWED,
    ]


async def test_each_check_is_timed(world: World, tmp_path: Path) -> None:
    before = observed("prompt"), observed("image")
    await world.handle(envelope_of(requested("job-1")))
    await world.handle(envelope_of(generated(store(tmp_path, "job-1", [png()]))))
    assert (observed("prompt"), observed("image")) == (before[0] + 1, before[1] + 1)


async def test_allowed_images_go_on_to_delivery_with_their_job_state(
    world: World,
    tmp_path: Path,
) -> None:
    refs = store(tmp_path, "job-1", [png((255, 0, 0)), png((0, 0, 255))])
    cause = envelope_of(generated(refs), producer="gpu-worker-1")
    await world.handle(cause)
    [(env, event)] = world.published()
    assert event == ImageModerated(
        job_id="job-1",
        verdict=Verdict.ALLOWED,
        per_image=(Verdict.ALLOWED, Verdict.ALLOWED),
        categories=(),
        scores={"sexual": 0.01, "sexual.0": 0.01, "sexual.1": 0.01},
        checker="fake-image-classifier 1",
        images=refs,
        fencing_token=3,
        webhook_url="https://hooks.example.com/in",
    )
    assert env.event_id == derived_event_id(cause.event_id, ImageModerated.event_type)
    assert env.causation_id == cause.event_id
    assert world.publisher.records[0].topic == MODERATED


async def test_an_unsafe_image_is_withheld_and_named(
    settings: SafetySettings, tmp_path: Path
) -> None:
    unsafe = png((1, 2, 3))
    world = World(settings, images=FakeImageClassifier({sha(unsafe): 0.93}))
    refs = store(tmp_path, "job-1", [png(), unsafe])
    await world.handle(envelope_of(generated(refs)))
    [(_, event)] = world.published()
    assert isinstance(event, ImageModerated)
    assert (event.verdict, event.per_image, event.categories) == (
        Verdict.ALLOWED,
        (Verdict.ALLOWED, Verdict.REJECTED),
        ("sexual",),
    )
    assert event.scores["sexual"] == 0.93


async def test_a_job_whose_every_image_is_unsafe_is_rejected(
    settings: SafetySettings, tmp_path: Path
) -> None:
    world = World(settings, images=FakeImageClassifier(default=0.95))
    await world.handle(envelope_of(generated(store(tmp_path, "job-1", [png()]))))
    [(_, event)] = world.published()
    assert isinstance(event, ImageModerated)
    assert (event.verdict, event.per_image) == (Verdict.REJECTED, (Verdict.REJECTED,))


async def test_whole_batch_mode_rejects_the_job_for_one_image(
    settings: SafetySettings, tmp_path: Path
) -> None:
    unsafe = png((1, 2, 3))
    world = World(
        settings.model_copy(update={"image_reject_whole_batch": True}),
        images=FakeImageClassifier({sha(unsafe): 0.93}),
    )
    await world.handle(envelope_of(generated(store(tmp_path, "job-1", [png(), unsafe]))))
    [(_, event)] = world.published()
    assert event.verdict == Verdict.REJECTED  # type: ignore[attr-defined]


async def test_a_redelivered_result_publishes_the_same_event_again(
    world: World, tmp_path: Path
) -> None:
    cause = envelope_of(generated(store(tmp_path, "job-1", [png()])))
    await world.handle(cause)
    await world.handle(cause)
    (first, a), (second, b) = world.published()
    assert first.event_id == second.event_id
    assert a == b


async def test_an_image_whose_bytes_changed_is_an_error_not_a_verdict(
    world: World, tmp_path: Path
) -> None:
    refs = store(tmp_path, "job-1", [png()])
    Path(refs[0].uri.removeprefix("file://")).write_bytes(png((9, 9, 9)))
    with pytest.raises(BlobIntegrityError, match="sha256"):
        await world.handle(envelope_of(generated(refs)))
    assert world.published() == []  # the consumer retries, then dead-letters


async def test_a_missing_image_is_an_error(world: World, tmp_path: Path) -> None:
    refs = store(tmp_path, "job-1", [png()])
    Path(refs[0].uri.removeprefix("file://")).unlink()
    with pytest.raises(FileNotFoundError):
        await world.handle(envelope_of(generated(refs)))
    assert world.published() == []


async def test_bytes_that_are_no_image_are_an_error(world: World, tmp_path: Path) -> None:
    refs = store(tmp_path, "job-1", [b"GIF89a but not really"])
    with pytest.raises(UnreadableImage):
        await world.handle(envelope_of(generated(refs)))
    assert world.published() == []


async def test_a_result_without_images_is_an_error(world: World) -> None:
    empty = ImageGenerated(job_id="job-1", worker_id="worker-1", fencing_token=3, images=())
    with pytest.raises(ValueError, match="no images"):
        await world.handle(envelope_of(empty))
    assert world.published() == []
