"""A failed attempt is always published, and the worker goes on taking jobs (issue 10).

Storage: a blob store that cannot take the images (folder unwritable, disk full) used to raise
out of the handler: no failure event, the job stayed ``running`` for good and the worker's next
jobs ``queued``. Now the attempt ends with ``GenerationFailed(terminal=False,
reason=storage_unavailable)``, the scheduler re-queues it, and once the store takes bytes again
jobs succeed. Out of memory and model errors are attempt failures too, with their own reasons.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.adapters.blobs import (
    BlobStore,
    InMemoryBlobStore,
    LocalBlobStore,
    StorageUnavailable,
)
from imagegen_gpu_worker.domain.plan import RunPlan
from imagegen_gpu_worker.domain.run import ModelUnavailable, RunResult
from imagegen_gpu_worker.service_layer.worker import Worker, WorkerState
from imagegen_runtime.faults import Backoff
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, GenerationParams, Payload, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.registry import parse

pytestmark = pytest.mark.unit
WORKER = "w1"


class OneImageRunner:
    """A runner without a model: one PNG per job, or the error it is told to raise."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def run(
        self,
        plan: RunPlan,
        on_step: Callable[[int, int, str | None], None],
        cancelled: Callable[[], bool],
        pause: Callable[[], bool] | None = None,
        resume_state: bytes | None = None,
    ) -> RunResult:
        if self.error is not None:
            raise self.error
        return RunResult([b"\x89PNG-" + plan.job_id.encode()], {"total": 1.0}, plan.steps)


class FullDisk(InMemoryBlobStore):
    """An in-memory store that refuses writes while ``full`` (ENOSPC, as a full disk does)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = True

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        self.check_writable()
        return super().put(name, data)

    def check_writable(self) -> None:
        if self.full:  # as LocalBlobStore reports an OSError: the port's error, naming why
            error = OSError(errno.ENOSPC, "No space left on device")
            raise StorageUnavailable(f"memory store is full: {error}") from error


def assignment(job_id: str) -> tuple[Envelope, ev.JobScheduled]:
    msg = ev.JobScheduled(
        job_id=job_id,
        worker_id=WORKER,
        tier=Tier.FAST,
        fencing_token=1,
        attempt=1,
        params=GenerationParams(
            prompt="a red circle",
            model="m",
            width=64,
            height=64,
            steps=2,
            guidance_scale=5.0,
            seed=0,
        ),
    )
    return Envelope.wrap(msg, correlation_id=job_id, producer="test"), msg


def make_worker(
    blobs: BlobStore, runner: OneImageRunner | None = None, store_retry_s: float = 0.05
) -> Worker:
    """A worker whose blob writes are retried for ``store_retry_s`` (a short outage's budget)."""
    return Worker(
        WorkerState(WORKER),
        runner or OneImageRunner(),
        blobs,
        InMemoryPublisher(),
        store_retry_s=store_retry_s,
        store_backoff=Backoff(initial_s=0.001, cap_s=0.01),
    )


def outcome(publisher: InMemoryPublisher, job_id: str) -> Payload:
    """The last event the worker published about ``job_id`` (what the scheduler acts on)."""
    return parse([r.envelope for r in publisher.records if r.key == job_id.encode()][-1])


async def run_job(worker: Worker, job_id: str) -> Payload:
    env, msg = assignment(job_id)
    await worker.on_assignment(env, msg)  # returns: the consumer commits and takes the next
    assert isinstance(worker.publisher, InMemoryPublisher)
    return outcome(worker.publisher, job_id)


async def test_a_full_disk_fails_the_attempt_and_the_next_job_succeeds_once_it_has_room() -> None:
    blobs = FullDisk()
    worker = make_worker(blobs)
    for job in ("j1", "j2"):  # the worker goes on taking jobs while the disk is full
        failed = await run_job(worker, job)
        assert isinstance(failed, ev.GenerationFailed)
        assert failed.reason == ev.FailureReason.STORAGE_UNAVAILABLE and not failed.terminal
        assert failed.worker_id == WORKER and "No space left" in failed.message
    blobs.full = False
    done = await run_job(worker, "j3")
    assert isinstance(done, ev.ImageGenerated) and len(done.images) == 1
    assert worker.state.running_job is None


class BriefOutage(FullDisk):
    """A store that refuses the first ``n`` writes, then takes them (an outage that ends)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.refusals = n

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        self.full = self.refusals > 0
        self.refusals -= 1
        return super().put(name, data)


async def test_a_brief_blob_store_outage_delays_the_image_without_failing_the_attempt() -> None:
    """Regression (chaos soak): 16 outages of 5-20 s made 585 attempt failures and 136 jobs
    failed with retries_exhausted; each write failed at once. Failed before the fix: the first
    refused write published GenerationFailed(storage_unavailable)."""
    blobs = BriefOutage(n=3)
    worker = make_worker(blobs, store_retry_s=30.0)
    done = await run_job(worker, "j1")
    assert isinstance(done, ev.ImageGenerated) and len(done.images) == 1
    assert assert_no_failure(worker, "j1") and blobs.refusals == -1


def assert_no_failure(worker: Worker, job_id: str) -> bool:
    assert isinstance(worker.publisher, InMemoryPublisher)
    events = [parse(r.envelope) for r in worker.publisher.records if r.key == job_id.encode()]
    return not any(isinstance(e, ev.GenerationFailed) for e in events)


async def test_an_unwritable_blob_folder_fails_the_attempt_until_it_is_restored(
    tmp_path: Path,
) -> None:
    # The blob folder's parent is a file: no one can create or write it, root included
    # (a chmod'ed folder would not stop root, and tests may run as root).
    blocker = tmp_path / "storage"
    blocker.write_text("not a folder")
    worker = make_worker(LocalBlobStore(blocker / "blobs"))
    failed = await run_job(worker, "j1")
    assert isinstance(failed, ev.GenerationFailed)
    assert failed.reason == ev.FailureReason.STORAGE_UNAVAILABLE and not failed.terminal

    blocker.unlink()  # storage restored
    done = await run_job(worker, f"j-{uuid.uuid4().hex[:6]}")
    assert isinstance(done, ev.ImageGenerated)
    assert Path(done.images[0].uri.removeprefix("file://")).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
        (
            registry.ChecksumError("models/m: unet/x has sha256 0f, model.json says 3a"),
            "model_unavailable",
        ),
        (ValueError("something else broke"), "internal_error"),
    ],
)
async def test_runner_errors_are_attempt_failures_with_their_reason(
    error: Exception, reason: str
) -> None:
    runner = OneImageRunner()
    runner.error = error
    worker = make_worker(InMemoryBlobStore(), runner)
    failed = await run_job(worker, "j1")
    assert isinstance(failed, ev.GenerationFailed)
    assert failed.reason.value == reason and not failed.terminal and failed.attempt == 1
    runner.error = None
    assert isinstance(await run_job(worker, "j2"), ev.ImageGenerated)


async def test_a_model_not_registered_on_this_worker_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="'m' is not registered on this worker"):
        registry.verify(tmp_path / "m")


def test_workers_sharing_a_blob_folder_probe_and_store_at_once(tmp_path: Path) -> None:
    """A local fleet's workers share one blob folder: their writable probes (same name) and
    writes of the same blob at the same moment never trip over each other's temporary file."""
    import threading

    stores = [LocalBlobStore(tmp_path / "blobs") for _ in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def probe(store: LocalBlobStore) -> None:
        start.wait()
        try:
            for _ in range(50):
                store.check_writable()
                store.put("job/0.png", b"same bytes")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=probe, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (tmp_path / "blobs" / "job" / "0.png").read_bytes() == b"same bytes"
    assert [p.name for p in (tmp_path / "blobs").rglob("*.tmp")] == []
