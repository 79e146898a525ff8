"""The worker's heartbeat loop: its state, published every ``interval_s`` seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from imagegen_runtime.publishing import Publisher
from imagegen_runtime.waiting import sleep_or_stop
from imagegen_schemas.workers import LoadedModel, PremergedLora, WorkerHeartbeat, WorkerStatus

from ..adapters.memory import MemoryInfo
from ..metrics import record_memory

log = logging.getLogger(__name__)


def heartbeat(
    worker_id: str,
    mem: MemoryInfo,
    interval_s: float,
    running_job: str | None = None,
    loaded: tuple[LoadedModel, ...] = (),
    capabilities: tuple[str, ...] = (),
    premerged: tuple[PremergedLora, ...] = (),
    pinned: tuple[str, ...] = (),
) -> WorkerHeartbeat:
    """The worker's state now: busy with ``running_job`` or idle, its resident models (and
    adapters), the LoRAs pre-merged into them (``premerged``, ADR 0704), the models the pool
    pinned here (``pinned``, ADR 0711), and the model families it can run (``capabilities``:
    those of the models registered in its ``models_dir``, read from their manifests at start;
    see ``bootstrap``)."""
    return WorkerHeartbeat(
        worker_id=worker_id,
        status=WorkerStatus.BUSY if running_job else WorkerStatus.IDLE,
        gpu_type=mem.device_name,
        memory_total_bytes=mem.total_bytes,
        memory_free_bytes=mem.free_bytes,
        largest_free_block_bytes=mem.largest_free_block_bytes,
        fragmentation_ratio=mem.fragmentation_ratio,
        capabilities=capabilities,
        interval_s=interval_s,
        running_job_id=running_job,
        loaded=loaded,
        premerged_loras=premerged,
        pinned=pinned,
    )


def loaded_models(
    resident: Iterable[tuple[str, int]],
    loras: Iterable[tuple[str, str, int]] = (),
    controlnets: Iterable[tuple[str, int]] = (),
) -> tuple[LoadedModel, ...]:
    """The heartbeat's ``loaded`` from the runner's (model id, bytes), evictions reflected, then
    its LoRAs ((model id, LoRA id, bytes): loaded into a resident model) as ``kind="lora"``,
    each LoRA once, then its ControlNets ((id, bytes), ADR 0706) as ``kind="controlnet"``."""
    models = [LoadedModel(model_id=model_id, bytes=size) for model_id, size in resident]
    adapters: dict[str, int] = {}
    for _, lora_id, size in loras:
        adapters[lora_id] = max(size, adapters.get(lora_id, 0))
    return (
        tuple(models)
        + tuple(
            LoadedModel(model_id=lora_id, kind="lora", bytes=size)
            for lora_id, size in sorted(adapters.items())
        )
        + tuple(
            LoadedModel(model_id=net_id, kind="controlnet", bytes=size)
            for net_id, size in controlnets
        )
    )


def premerged_loras(premerged: Iterable[tuple[str, str, int]]) -> tuple[PremergedLora, ...]:
    """The heartbeat's ``premerged_loras`` from the runner's (model id, LoRA id, bytes of its
    deltas) (``DiffusersRunner.premerged``), by model then LoRA. Each such LoRA is loaded as an
    adapter too, so :func:`loaded_models` lists it as ``kind="lora"`` as well; this says on
    which model it is pre-merged."""
    return tuple(
        PremergedLora(model_id=model_id, lora_id=lora_id, bytes=size)
        for model_id, lora_id, size in sorted(premerged)
    )


async def heartbeat_loop(
    publisher: Publisher,
    beat: Callable[[], WorkerHeartbeat],
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Publish ``beat()`` now and then every ``interval_s`` until ``stop`` is set; each beat
    also sets the worker's memory gauges (:func:`..metrics.record_memory`)."""
    while not stop.is_set():
        try:
            hb = beat()
            record_memory(hb)  # the memory gauges show what the heartbeat says
            await publisher.publish(hb, key=hb.worker_id)
        except Exception as exc:  # a missed beat is not fatal; the next one may get through
            log.warning("heartbeat not published", extra={"error": repr(exc)})
        await sleep_or_stop(stop, interval_s)
