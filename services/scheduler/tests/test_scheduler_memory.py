"""Routing by the budget model (issue 12, ADR 0708): the scheduler judges a job's need with the
formula the workers admit jobs by (``imagegen_runtime.budget``), against each worker's reported
memory less the same margin; a job a worker ran out of memory on goes to another worker.

Each test reads "given these heartbeats and requests, the scheduler assigns the job to ...".
The catalog is read from a manifest, as the service reads it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imagegen_runtime import budget
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_scheduler.adapters.catalog import load_catalog
from imagegen_scheduler.domain import JobRequest, ModelCatalog, footprint_gb
from imagegen_scheduler.domain import Tier as PolicyTier
from imagegen_scheduler.domain.facts import worker_view
from imagegen_scheduler.service_layer.scheduling import Scheduler
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.catalog import TOPICS
from imagegen_schemas.workers import LoadedModel, ModelLoaded, WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0
GIB = 2**30
EVENT_TYPES = {e.event_type: e for t in TOPICS for e in t.events}
# An SDXL-sized manifest (fp16 files): the sizes are the manifest's numbers, no file is written.
SDXL_COMPONENTS = {
    "unet": 5 * GIB,
    "text_encoder": 246 * 2**20,
    "text_encoder_2": 1390 * 2**20,
    "vae": 160 * 2**20,
    "tokenizer": 2_000_000,
    "scheduler": 500,
}


@pytest.fixture
def catalog(tmp_path: Path) -> ModelCatalog:
    folder = tmp_path / "sdxl-base"
    folder.mkdir()
    manifest = {"id": "sdxl-base", "family": "sdxl", "components": SDXL_COMPONENTS}
    (folder / "model.json").write_text(json.dumps(manifest))
    return load_catalog(tmp_path)


def need_gb(catalog: ModelCatalog, batch: int) -> float:
    request = JobRequest("x", "u", PolicyTier.FAST, "sdxl-base", (), 1024, 1024, batch, 30, 0.0)
    return footprint_gb(request, catalog)


def beat(worker_id: str, memory_bytes: int, loaded: int | None = None) -> WorkerHeartbeat:
    """An idle worker's heartbeat; ``loaded``: it holds sdxl-base, measured at that many bytes."""
    held = () if loaded is None else (LoadedModel(model_id="sdxl-base", bytes=loaded),)
    return WorkerHeartbeat(
        worker_id=worker_id,
        status=WorkerStatus.IDLE,
        gpu_type=f"budget-{memory_bytes // 2**20}MiB",
        memory_total_bytes=memory_bytes,
        memory_free_bytes=memory_bytes - (loaded or 0),
        capabilities=("sdxl",),
        loaded=held,
    )


def request(job_id: str, batch: int) -> list[ev.Payload]:
    params = GenerationParams(
        prompt="p",
        model="sdxl-base",
        width=1024,
        height=1024,
        steps=30,
        guidance_scale=5,
        seed=3,
        num_images=batch,
    )
    return [
        ev.GenerationRequested(
            job_id=job_id, user_id=f"u-{job_id}", plan=Plan.PRO, tier=Tier.FAST, params=params
        ),
        ev.PromptModerated(job_id=job_id, verdict=ev.Verdict.ALLOWED),
    ]


class Live:
    """A live scheduler whose publications come back to it, as from Kafka."""

    def __init__(self, catalog: ModelCatalog) -> None:
        self.pub = InMemoryPublisher()
        self.s = Scheduler(self.pub, catalog, clock=lambda: NOW)
        self.s.live = True
        self.seen = 0

    async def feed(self, *payloads: ev.Payload) -> None:
        for p in payloads:
            await self._fold(p)
            await self.s.after_batch()
            while self.seen < len(self.pub.records):
                record = self.pub.records[self.seen]
                self.seen += 1
                data = record.envelope.data
                await self._fold(EVENT_TYPES[record.envelope.type].model_validate(data))

    async def _fold(self, p: ev.Payload) -> None:
        key = getattr(p, "job_id", None) or getattr(p, "worker_id", "x")
        at = datetime.fromtimestamp(NOW, UTC)
        env = Envelope.wrap(p, correlation_id=key, producer="t", occurred_at=at)
        await self.s.on_event(env, p, None, True)

    def scheduled(self, job_id: str) -> list[tuple[str, int]]:
        return [
            (s.worker_id, s.attempt)
            for r in self.pub.records
            if r.envelope.type == ev.JobScheduled.event_type
            and (s := ev.JobScheduled.model_validate(r.envelope.data)).job_id == job_id
        ]


def budgets(catalog: ModelCatalog) -> tuple[int, int]:
    """(small, big) worker memory in bytes: the small one's usable part holds the job at batch 1
    and not at batch 4 by the budget model; the big one's holds it at batch 4."""
    one, four = need_gb(catalog, 1), need_gb(catalog, 4)
    assert one < four
    small = int((one + four) / 2 / budget.USABLE_FRACTION * budget.GB)
    big = int(2 * four / budget.USABLE_FRACTION * budget.GB)
    return small, big


def test_the_catalog_fills_the_budget_models_formula_from_the_manifest(
    catalog: ModelCatalog,
) -> None:
    weights_mb = budget.weights_mb(SDXL_COMPONENTS)
    expected = budget.job_need_mb(
        weights_mb, "sdxl", 1024, 1024, 4, denoiser_mb=budget.denoiser_mb(SDXL_COMPONENTS)
    )
    assert need_gb(catalog, 4) == pytest.approx(expected.total_mb * budget.MIB / budget.GB)
    # an fp16 SDXL UNet (5 GiB) against the seed's 10 GB reference: sqrt(1/2) of 2 GB an image
    per_image_gib = (need_gb(catalog, 4) - need_gb(catalog, 3)) * budget.GB / GIB
    assert per_image_gib == pytest.approx(2 * 0.5**0.5)


def test_a_worker_reports_its_budget_and_the_scheduler_keeps_the_same_margin() -> None:
    view = worker_view(beat("w", 10 * GIB), budget.USABLE_FRACTION)
    usable_mb = budget.usable_mb(10 * GIB / budget.MIB)
    assert view.budget_gb * budget.GB == pytest.approx(usable_mb * budget.MIB)


async def test_a_job_goes_to_a_worker_whose_budget_holds_it(catalog: ModelCatalog) -> None:
    small, big = budgets(catalog)
    live = Live(catalog)
    await live.feed(beat("small", small), beat("big", big), *request("one", batch=1))
    assert live.scheduled("one") == [("small", 1)]  # both idle: the smaller budget that holds it
    live = Live(catalog)
    await live.feed(beat("small", small), beat("big", big), *request("four", batch=4))
    assert live.scheduled("four") == [("big", 1)]  # the small one cannot hold four images


async def test_an_out_of_memory_attempt_is_rerouted_to_another_worker(
    catalog: ModelCatalog,
) -> None:
    small, big = budgets(catalog)
    live = Live(catalog)
    await live.feed(beat("small", small), beat("big", big), *request("j", batch=1))
    assert live.scheduled("j") == [("small", 1)]
    # the worker ran out of memory after its split retry (an estimate is only an estimate)
    await live.feed(
        ev.GenerationFailed(
            job_id="j",
            reason=ev.FailureReason.OUT_OF_MEMORY,
            message="out of memory: 1 image(s) of 1024x1024 on 'sdxl-base' need about ...",
            terminal=False,
            attempt=1,
            worker_id="small",
            fencing_token=1,
        )
    )
    assert live.scheduled("j") == [("small", 1), ("big", 2)]
    await live.feed(*request("k", batch=1))  # the small worker still takes other jobs
    assert live.scheduled("k") == [("small", 1)]


def as_measured() -> int:
    """sdxl-base's weights as a worker measures them loaded: half again what the manifest's
    files say (on CPU float16 files load as float32). The small worker holds them, but not
    them and a job's activations within its margin."""
    return int(1.5 * budget.weights_mb(SDXL_COMPONENTS) * budget.MIB)


async def test_a_models_measured_size_replaces_the_manifests_when_larger(
    catalog: ModelCatalog,
) -> None:
    """Seen with `IMAGEGEN_STACK_WORKERS=4 IMAGEGEN_STACK_WORKER_BUDGETS_MB=64,32 make up`: the
    32 MiB workers held the demo model, and the scheduler sent them its jobs, which they refused
    as out of memory (two attempts lost), because it judged the model by its files (float16)
    while the workers hold it as float32. The size a worker reports for a model it holds is
    what the model takes; the scheduler judges jobs by it where it is larger."""
    small, big = budgets(catalog)
    measured = as_measured()
    assert measured < small
    # the job queued before the size is known is judged by it once it is
    live = Live(catalog)
    await live.feed(*request("queued", batch=1))
    await live.feed(beat("small", small, loaded=measured), beat("big", big))
    assert live.scheduled("queued") == [("big", 1)]
    # a job arriving after: the same, though the small worker holds the model (warm)
    await live.feed(ev.ImageGenerated(job_id="queued", worker_id="big", fencing_token=1, images=()))
    await live.feed(*request("later", batch=1))
    assert live.scheduled("later") == [("big", 1)]
    # a ModelLoaded says the same as a heartbeat
    live = Live(catalog)
    loaded = ModelLoaded(
        worker_id="small", model=LoadedModel(model_id="sdxl-base", bytes=measured), load_ms=5.0
    )
    await live.feed(beat("small", small), beat("big", big), loaded, *request("j", batch=1))
    assert live.scheduled("j") == [("big", 1)]


async def test_a_measured_size_below_the_manifests_changes_nothing(
    catalog: ModelCatalog,
) -> None:
    """A smaller figure (another worker class, a quantised load) does not shrink the estimate:
    the scheduler keeps the larger of the two, so no worker is sent a job it may not hold."""
    small, big = budgets(catalog)
    live = Live(catalog)
    await live.feed(beat("small", small, loaded=1), beat("big", big), *request("four", batch=4))
    assert live.scheduled("four") == [("big", 1)]
    assert need_gb(live.s.state.catalog, 4) == need_gb(catalog, 4)
