"""Composition root of the safety service: the only place adapters are built.

The real classifiers are built here but load their models in a background task started with the
service (ADR 0300): the process answers /healthz at once, /readyz turns ready once both models are
in memory (and Kafka is reachable and partitions assigned), and the first job is not the one that
pays the ~20 s load. Tests pass fakes by name.
"""

from __future__ import annotations

import asyncio
import logging
import time

from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.objectstore import object_store
from imagegen_runtime.publishing import Publisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import consumer_service

from .adapters.blobs import BlobReader
from .adapters.classifiers import ImageClassifier, PromptClassifier
from .adapters.minilm import MiniLmProfanityClassifier
from .adapters.opennsfw import OpenNsfwClassifier
from .adapters.revocation_log import KafkaRevocationLog
from .config import SERVICE, SUBSCRIBES, SafetySettings
from .service_layer.handlers import make_handler
from .service_layer.revocations import RevocationLog, Revocations

log = logging.getLogger(__name__)


def bootstrap(
    settings: SafetySettings,
    *,
    publisher: Publisher | None = None,
    prompt_classifier: PromptClassifier | None = None,
    image_classifier: ImageClassifier | None = None,
    revocation_log: RevocationLog | None = None,
) -> ServiceApp:
    publisher = publisher or KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    prompts = prompt_classifier or MiniLmProfanityClassifier(threads=settings.model_threads)
    images = image_classifier or OpenNsfwClassifier(threads=settings.model_threads)
    revocations = Revocations(revocation_log or KafkaRevocationLog(settings.kafka_bootstrap))
    blobs = BlobReader(object_store(settings.storage))  # s3:// blobs when STORAGE=s3
    handler = make_handler(publisher, prompts, images, settings, revocations, blobs)
    app = consumer_service(settings, SERVICE, SUBSCRIBES, handler, publisher)

    async def models_loaded() -> bool:
        return prompts.loaded and images.loaded

    async def warm_models(stop: asyncio.Event) -> None:
        """Load both models once, off the event loop; a failure stops the service (exit 1)."""
        start = time.perf_counter()
        await asyncio.to_thread(prompts.load)
        await asyncio.to_thread(images.load)
        log.info(
            "safety models loaded",
            extra={
                "event": "models_loaded",
                "seconds": round(time.perf_counter() - start, 1),
                "prompt_checker": prompts.checker,
                "image_checker": images.checker,
            },
        )

    app.readiness.add("models", models_loaded)
    app.tasks.append(warm_models)
    return app
