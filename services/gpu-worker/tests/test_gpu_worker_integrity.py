"""Model file integrity on the worker (issue 12 item 6, ADR 0707).

A file is hashed once and then trusted while its size and mtime equal its trust record; a
changed file is hashed at the next load, and one that no longer matches its manifest publishes
``ModelCorrupted``, is copied again from the manifest's ``source`` and checked, and the job runs
on the repaired model with the same bytes as before. The periodic check hashes everything and
so finds silent corruption that kept the size and the mtime. Without a source the job fails with
``model_unavailable`` and a message that says why, and the worker goes on.

The models are copies of the zoo's ``tiny-sd15`` (and its ink LoRA) in a temporary folder, each
with a pristine copy beside it named as the manifest's ``source``; jobs go through the real
``Worker`` and ``DiffusersRunner`` on CPU; events are read from the in-memory publisher.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.adapters.blobs import InMemoryBlobStore
from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner
from imagegen_gpu_worker.service_layer.integrity import (
    OK,
    REPAIRED,
    UNAVAILABLE,
    CheckStopped,
    IntegrityChecker,
    Pacer,
)
from imagegen_gpu_worker.service_layer.worker import Worker, WorkerState
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, GenerationParams, LoraSpec, Payload, Tier, parse
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import ModelCorrupted, ModelEvicted, ModelLoaded

pytestmark = pytest.mark.unit

WORKER = "w1"
SD15, INK = "tiny-sd15", "tiny-sd15-lora-ink"
UNET = "unet/diffusion_pytorch_model.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
MODELS_TOPIC = "imagegen.workers.models"


class CountingHasher:
    """``registry.sha256_file``, counting the files and bytes it reads."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.bytes = 0

    def __call__(self, path: Path, pace: registry.Pace | None = None) -> str:
        self.files.append(path.as_posix())
        self.bytes += path.stat().st_size
        return registry.sha256_file(path, pace)


@pytest.fixture(scope="module")
def torch_threads() -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)


@pytest.fixture
def models(tmp_path: Path, zoo: Path) -> Path:
    """``tmp/models`` with copies of tiny-sd15 and its ink LoRA whose manifests name a pristine
    copy (``tmp/pristine/<id>``) as their ``source``."""
    root = tmp_path / "models"
    for model_id in (SD15, INK):
        shutil.copytree(zoo / model_id, root / model_id)
        shutil.copytree(zoo / model_id, tmp_path / "pristine" / model_id)
        set_source(root / model_id, f"../../pristine/{model_id}")
    return root


def set_source(folder: Path, source: str | None) -> None:
    manifest = folder / registry.MANIFEST
    doc = json.loads(manifest.read_text())
    doc.pop("source", None)
    if source is not None:
        doc["source"] = source
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def corrupt(path: Path, *, keep_mtime: bool) -> str:
    """Flip bytes in the middle of ``path`` (same size). With ``keep_mtime`` its mtime is put
    back (silent corruption); else it is set one second later (a visible change). Returns the
    file's new sha256."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))
    mtime = st.st_mtime_ns if keep_mtime else st.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(st.st_atime_ns, mtime))
    after = path.stat()
    assert after.st_size == st.st_size and (after.st_mtime_ns == st.st_mtime_ns) == keep_mtime
    return registry.sha256_file(path)


def make_runner(models: Path, trust_dir: Path, hasher: CountingHasher) -> DiffusersRunner:
    integrity = registry.Integrity(registry.TrustStore(trust_dir), hasher)
    return DiffusersRunner(models, "cpu", integrity=integrity)


def make_worker(runner: DiffusersRunner) -> Worker:
    worker = Worker(WorkerState(WORKER), runner, InMemoryBlobStore(), InMemoryPublisher())
    runner.on_change = worker.reporter.record
    return worker


def assignment(job_id: str, loras: tuple[LoraSpec, ...] = ()) -> tuple[Envelope, ev.JobScheduled]:
    msg = ev.JobScheduled(
        job_id=job_id,
        worker_id=WORKER,
        tier=Tier.FAST,
        fencing_token=1,
        attempt=1,
        params=GenerationParams(
            prompt="a red circle on a blue background",
            model=SD15,
            width=64,
            height=64,
            steps=3,
            guidance_scale=4.0,
            scheduler="ddim",
            seed=11,
            loras=loras,
        ),
    )
    return Envelope.wrap(msg, correlation_id=job_id, producer="scheduler"), msg


async def run_job(worker: Worker, job_id: str, loras: tuple[LoraSpec, ...] = ()) -> Payload:
    """Run an assignment; the worker's last event about the job (what the scheduler sees)."""
    env, msg = assignment(job_id, loras)
    await worker.on_assignment(env, msg)
    publisher = worker.publisher
    assert isinstance(publisher, InMemoryPublisher)
    return parse([r.envelope for r in publisher.records if r.key == job_id.encode()][-1])


def png(worker: Worker, done: Payload) -> bytes:
    assert isinstance(done, ev.ImageGenerated), done
    blobs = worker.blobs
    assert isinstance(blobs, InMemoryBlobStore)
    return blobs.get(done.images[0].uri)


async def facts(worker: Worker, until: type, timeout: float = 10.0) -> list[Any]:
    """The residency facts published so far, once one of type ``until`` is among them (the
    reporter publishes a job's facts in the background)."""
    publisher = worker.publisher
    assert isinstance(publisher, InMemoryPublisher)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = [parse(env) for env in publisher.on(MODELS_TOPIC)]
        if any(isinstance(f, until) for f in got):
            return got
        assert loop.time() < deadline, got
        await asyncio.sleep(0.01)


# Trust by size and mtime


def test_a_verified_folder_is_not_hashed_again_until_a_file_changes(
    models: Path, tmp_path: Path
) -> None:
    hasher = CountingHasher()
    integrity = registry.Integrity(registry.TrustStore(tmp_path / "trust"), hasher)
    folder = models / SD15
    entry = integrity.verify(folder)
    assert len(hasher.files) == len(entry.files) > 5  # the first check hashes every file

    # A restarted worker (a new store on the same directory) trusts the record: nothing read.
    hasher2 = CountingHasher()
    again = registry.Integrity(registry.TrustStore(tmp_path / "trust"), hasher2)
    assert again.verify(folder) == entry
    assert hasher2.files == [] and hasher2.bytes == 0

    # A file whose mtime changed (content the same) is hashed again, alone, and trusted anew.
    st = (folder / UNET).stat()
    os.utime(folder / UNET, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again.verify(folder)
    assert hasher2.files == [(folder / UNET).as_posix()]
    again.verify(folder)
    assert len(hasher2.files) == 1

    # The full check hashes everything whatever the record says.
    again.full_check(folder)
    assert len(hasher2.files) == 1 + len(entry.files)


def test_a_second_load_of_a_verified_model_reads_no_file_for_its_check(
    models: Path, tmp_path: Path, torch_threads: None
) -> None:
    hasher = CountingHasher()
    first = make_runner(models, tmp_path / "trust", hasher)
    first.load(SD15)
    files = len(registry.read_manifest(models / SD15).files)
    assert len(hasher.files) == files and hasher.bytes > 100_000

    # Unloaded (no RAM tier: freed) and loaded again from disk: opened, not hashed.
    assert first.evict(SD15) == "evicted" and first.in_ram() == []
    first.load(SD15)
    assert len(hasher.files) == files

    # A restarted worker with the same trust records: the same.
    hasher2 = CountingHasher()
    make_runner(models, tmp_path / "trust", hasher2).load(SD15)
    assert hasher2.files == []


# Corruption found at a load


async def test_a_changed_file_is_found_at_load_published_repaired_and_the_job_succeeds(
    models: Path, tmp_path: Path, torch_threads: None
) -> None:
    worker = make_worker(make_runner(models, tmp_path / "trust", CountingHasher()))
    before = png(worker, await run_job(worker, "j1"))
    pristine = (tmp_path / "pristine" / SD15 / UNET).read_bytes()

    # The worker restarts (nothing resident, the trust records kept), and the UNet's weights
    # change on disk meanwhile: same size, a later mtime.
    actual = corrupt(models / SD15 / UNET, keep_mtime=False)
    worker = make_worker(make_runner(models, tmp_path / "trust", CountingHasher()))
    done = await run_job(worker, "j2")

    assert png(worker, done) == before  # the repaired model's image, byte for byte
    assert (models / SD15 / UNET).read_bytes() == pristine
    published = await facts(worker, ModelLoaded)
    bad, loaded = published[0], published[-1]
    assert isinstance(bad, ModelCorrupted)
    assert (bad.worker_id, bad.model_id, bad.file) == (WORKER, SD15, UNET)
    expected = registry.read_manifest(models / SD15).files[UNET]
    assert (bad.expected_sha256, bad.actual_sha256) == (expected, actual) and actual != expected
    assert isinstance(loaded, ModelLoaded) and loaded.model.model_id == SD15
    assert loaded.source == "disk"
    # The repaired file is trusted from now on (its record was made by the repair's check).
    registry.Integrity(registry.TrustStore(tmp_path / "trust"), hasher := CountingHasher()).verify(
        models / SD15
    )
    assert hasher.files == []


async def test_without_a_source_the_job_fails_with_a_clear_reason_and_the_worker_goes_on(
    models: Path, tmp_path: Path, torch_threads: None
) -> None:
    set_source(models / SD15, None)
    actual = corrupt(models / SD15 / UNET, keep_mtime=False)
    worker = make_worker(make_runner(models, tmp_path / "trust", CountingHasher()))

    failed = await run_job(worker, "j1")
    assert isinstance(failed, ev.GenerationFailed)
    assert failed.reason == ev.FailureReason.MODEL_UNAVAILABLE and not failed.terminal
    assert "records no 'source' to copy it from" in failed.message
    assert f"{UNET} has sha256 {actual}" in failed.message
    [bad] = [f for f in await facts(worker, ModelCorrupted) if isinstance(f, ModelCorrupted)]
    assert (bad.model_id, bad.file, bad.actual_sha256) == (SD15, UNET, actual)
    assert worker.runner.resident() == []  # type: ignore[attr-defined]

    # The file is still bad: the next attempt here finds it again (its record was dropped).
    assert isinstance(await run_job(worker, "j2"), ev.GenerationFailed)
    # Restored by hand (the pristine bytes, any mtime), the worker runs the model again.
    shutil.copyfile(tmp_path / "pristine" / SD15 / UNET, models / SD15 / UNET)
    assert isinstance(await run_job(worker, "j3"), ev.ImageGenerated)


def test_a_source_copy_that_does_not_match_is_not_installed(models: Path, tmp_path: Path) -> None:
    integrity = registry.Integrity(registry.TrustStore(), CountingHasher())
    corrupt(tmp_path / "pristine" / SD15 / UNET, keep_mtime=False)  # the source is bad too
    bad_bytes = corrupt(models / SD15 / UNET, keep_mtime=False)
    with pytest.raises(registry.Corrupted) as found:
        integrity.verify(models / SD15)
    with pytest.raises(registry.RepairFailed, match="the copy from .* has sha256"):
        integrity.repair(models / SD15, found.value)
    assert registry.sha256_file(models / SD15 / UNET) == bad_bytes  # left as it was
    assert not list((models / SD15 / "unet").glob(registry.REPAIR_PREFIX + "*"))


# The periodic check


async def test_the_periodic_check_finds_silent_corruption_drops_and_repairs_the_model(
    models: Path, tmp_path: Path, torch_threads: None
) -> None:
    runner = make_runner(models, tmp_path / "trust", CountingHasher())
    worker = make_worker(runner)
    before = png(worker, await run_job(worker, "j1"))
    assert [m for m, _ in runner.resident()] == [SD15]

    # Same size, mtime put back: a load's check trusts it (nothing hashed, nothing found).
    actual = corrupt(models / SD15 / UNET, keep_mtime=True)
    blind = CountingHasher()
    registry.Integrity(registry.TrustStore(tmp_path / "trust"), blind).verify(models / SD15)
    assert blind.files == []

    checker = IntegrityChecker(models, runner.integrity, runner, worker.reporter)
    assert await checker.check_all() == {SD15: REPAIRED, INK: OK}

    published = await facts(worker, ModelEvicted)
    bad = [f for f in published if isinstance(f, ModelCorrupted)]
    evicted = [f for f in published if isinstance(f, ModelEvicted)]
    assert [(f.model_id, f.file, f.actual_sha256) for f in bad] == [(SD15, UNET, actual)]
    assert [(f.model_id, f.reason) for f in evicted] == [(SD15, "corrupted")]
    assert published.index(bad[0]) < published.index(evicted[0])
    assert runner.resident() == [] and runner.in_ram() == []
    assert (models / SD15 / UNET).read_bytes() == (tmp_path / "pristine" / SD15 / UNET).read_bytes()

    # Loaded again on demand, from the repaired files: the same image as before.
    assert png(worker, await run_job(worker, "j2")) == before
    assert await checker.check_all() == {SD15: OK, INK: OK}


async def test_a_model_a_run_is_using_is_dropped_when_the_run_ends(
    models: Path, tmp_path: Path, torch_threads: None
) -> None:
    runner = make_runner(models, tmp_path / "trust", CountingHasher())
    worker = make_worker(runner)
    checker = IntegrityChecker(models, runner.integrity, runner, worker.reporter)
    runner._acquire(SD15)  # a run holds the model (the runner's own in-use count)
    corrupt(models / SD15 / UNET, keep_mtime=True)
    assert (await checker.check_all())[SD15] == REPAIRED
    assert [m for m, _ in runner.resident()] == [SD15] and checker.pending == {SD15}

    runner._release(SD15)  # the run ends; the worker then calls after_run
    await checker.after_run()
    assert runner.resident() == [] and checker.pending == set()
    evicted = [f for f in await facts(worker, ModelEvicted) if isinstance(f, ModelEvicted)]
    assert [(f.model_id, f.reason) for f in evicted] == [(SD15, "corrupted")]


async def test_a_corrupted_lora_drops_the_models_holding_it_and_is_repaired(
    models: Path, tmp_path: Path, torch_threads: None
) -> None:
    runner = make_runner(models, tmp_path / "trust", CountingHasher())
    worker = make_worker(runner)
    ink = (LoraSpec(name=INK, weight=1.0),)
    before = png(worker, await run_job(worker, "j1", ink))
    assert [lora for _, lora, _ in runner.resident_loras()] == [INK]

    corrupt(models / INK / LORA_FILE, keep_mtime=True)
    checker = IntegrityChecker(models, runner.integrity, runner, worker.reporter)
    assert await checker.check_all() == {SD15: OK, INK: REPAIRED}
    published = await facts(worker, ModelEvicted)
    assert [(f.model_id, f.file) for f in published if isinstance(f, ModelCorrupted)] == [
        (INK, LORA_FILE)
    ]
    assert [(f.model_id, f.reason) for f in published if isinstance(f, ModelEvicted)] == [
        (SD15, "corrupted")
    ]
    assert runner.resident() == []
    assert png(worker, await run_job(worker, "j2", ink)) == before


async def test_the_periodic_check_without_a_source_leaves_the_model_unavailable(
    models: Path, tmp_path: Path, torch_threads: None
) -> None:
    runner = make_runner(models, tmp_path / "trust", CountingHasher())
    worker = make_worker(runner)
    assert isinstance(await run_job(worker, "j1"), ev.ImageGenerated)
    set_source(models / SD15, None)
    corrupt(models / SD15 / UNET, keep_mtime=True)
    checker = IntegrityChecker(models, runner.integrity, runner, worker.reporter)
    assert await checker.check_all() == {SD15: UNAVAILABLE, INK: OK}
    assert runner.resident() == []
    # Its record was dropped, so the next load hashes the file and fails with the reason.
    failed = await run_job(worker, "j2")
    assert isinstance(failed, ev.GenerationFailed)
    assert failed.reason == ev.FailureReason.MODEL_UNAVAILABLE
    assert "records no 'source'" in failed.message


async def test_the_checker_task_runs_rounds_every_interval_and_stops(models: Path) -> None:
    class Runner:
        def discard(self, model_id: str) -> set[str]:
            return set()

    from imagegen_gpu_worker.service_layer.residency import ResidencyReporter

    checker = IntegrityChecker(
        models,
        registry.Integrity(registry.TrustStore(), hasher := CountingHasher()),
        Runner(),
        ResidencyReporter(WORKER, InMemoryPublisher()),
        interval_s=0.01,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(checker.run(stop))
    files = sum(len(registry.read_manifest(models / m).files) for m in (SD15, INK))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(hasher.files) < 2 * files:  # two rounds, every file hashed in each
        assert loop.time() < deadline and not task.done()
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 30)

    off = IntegrityChecker(models, checker.integrity, Runner(), checker.reporter, interval_s=0)
    await asyncio.wait_for(off.run(asyncio.Event()), 5)  # returns at once: disabled


def test_the_pacer_keeps_the_read_rate_and_gives_up_when_stopping() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pace = Pacer(1e6, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):  # 4 MB read instantly: the reader is held to 1 MB/s
        pace(1_000_000)
    assert slept == pytest.approx([1.0, 1.0, 1.0, 1.0])
    now[0] += 10.0  # a slow disk: behind schedule, no sleep
    pace(1_000_000)
    assert len(slept) == 4

    pace.stop.set()
    with pytest.raises(CheckStopped):
        pace(1)
    with pytest.raises(ValueError, match="bytes_per_s must be positive"):
        Pacer(0)
