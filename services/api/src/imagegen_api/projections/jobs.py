"""The job projector: every lifecycle event, applied once, to the job read model."""

from __future__ import annotations

from imagegen_runtime.kafka import Handler, RecordMeta
from imagegen_schemas import Envelope, Payload

from ..service_layer.ports import JobStore


def projector(store: JobStore) -> Handler:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        await store.apply(env, payload, meta.topic, meta.partition, meta.offset)

    return handle
