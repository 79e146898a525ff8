"""Model integrity through the real broker and the wired worker (issue 12 item 6, ADR 0707).

The worker is ``bootstrap``'s (real ``DiffusersRunner``, trust records in a temporary
``integrity_dir``, a periodic check every 2 s) on a copy of the committed demo model whose
manifest names the committed folder as its ``source``. Before the worker starts, the copy's
files were verified once (a trust record made), then its UNet weights changed visibly (a later
mtime) and its VAE weights silently (same size, mtime put back). A LoadModel for it ends with
``ModelLoaded`` answering the command; both bad files are published as ``ModelCorrupted`` on
``imagegen.workers.models`` (the UNet's at the load or by the check, the VAE's only by the
periodic check, since a load trusts its size and mtime) and both are repaired on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from test_gpu_worker_pool_commands_kafka import read_until

from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.bootstrap import bootstrap
from imagegen_gpu_worker.config import GpuWorkerSettings
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_schemas import Envelope, parse
from imagegen_schemas.workers import LoadModel, ModelCorrupted, ModelLoaded

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[3] / "models" / "shapes-demo"
UNET = "unet/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"


def flip(path: Path, *, keep_mtime: bool) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))
    mtime = st.st_mtime_ns if keep_mtime else st.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(st.st_atime_ns, mtime))


async def test_corrupted_files_are_published_and_repaired_and_the_load_succeeds(
    infra, topics, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    models = tmp_path / "models"
    folder = models / "shapes-demo"
    shutil.copytree(DEMO, folder)
    doc = json.loads((folder / registry.MANIFEST).read_text())
    doc["source"] = str(DEMO)  # the committed folder is the pristine copy
    (folder / registry.MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    registry.Integrity(registry.TrustStore(tmp_path / "integrity")).verify(folder)  # installed
    flip(folder / UNET, keep_mtime=False)
    flip(folder / VAE, keep_mtime=True)

    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    settings = GpuWorkerSettings(
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topics,
        worker_id=worker_id,
        models_dir=models,
        blob_dir=tmp_path / "blobs",
        integrity_dir=tmp_path / "integrity",
        integrity_interval_s=2.0,
        preload_model="",
        heartbeat_interval_s=1.0,
    )
    app = bootstrap(settings)
    pub = KafkaPublisher(infra.kafka_bootstrap, "pool-manager", topics)
    command = await pub.publish(
        LoadModel(worker_id=worker_id, model_id="shapes-demo"), key=worker_id
    )

    def mine(records: list[Envelope]) -> list[object]:
        return [parse(e) for e in records if e.correlation_id == worker_id]

    def done(records: list[Envelope]) -> bool:
        facts = mine(records)
        bad = {f.file for f in facts if isinstance(f, ModelCorrupted)}
        answered = any(
            isinstance(f, ModelLoaded) and f.command_id == command.event_id for f in facts
        )
        return answered and bad == {UNET, VAE}

    stop = asyncio.Event()
    running = [asyncio.create_task(task(stop)) for task in app.tasks]
    try:
        records = await asyncio.to_thread(
            read_until, infra.kafka_bootstrap, topics + "imagegen.workers.models", done, 240
        )
        for task in running:  # none crashed meanwhile
            if task.done():
                task.result()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 60)
        for close in app.on_shutdown:
            await close()
        await pub.close()

    assert done(records), mine(records)
    facts = mine(records)
    for name in (UNET, VAE):
        bad = next(f for f in facts if isinstance(f, ModelCorrupted) and f.file == name)
        assert bad.model_id == "shapes-demo" and bad.expected_sha256 == doc["files"][name]
        assert bad.actual_sha256 not in ("", bad.expected_sha256)
        assert (folder / name).read_bytes() == (DEMO / name).read_bytes()  # repaired
    registry.verify(folder)  # every file matches its manifest again
