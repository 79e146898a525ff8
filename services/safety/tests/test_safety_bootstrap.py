"""The composition root: real classifiers by default, fakes by name, ready once models load."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient
from safety_testkit import envelope_of, requested

import imagegen_safety.bootstrap as wiring
from imagegen_runtime.health import Readiness, health_app
from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_runtime.service import ServiceApp
from imagegen_safety.adapters.fakes import FakeImageClassifier, FakePromptClassifier
from imagegen_safety.adapters.minilm import MiniLmProfanityClassifier
from imagegen_safety.adapters.opennsfw import OpenNsfwClassifier
from imagegen_safety.adapters.revocation_log import KafkaRevocationLog
from imagegen_safety.config import SafetySettings
from imagegen_schemas import parse
from imagegen_schemas.jobs import PromptModerated, Verdict

pytestmark = pytest.mark.unit


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand in for consumer_service (it builds Kafka clients); record what bootstrap hands it."""
    seen: dict[str, Any] = {}

    def consumer_service(
        settings: object,
        service: str,
        subscribes: tuple[str, ...],
        handler: object,
        publisher: object,
    ) -> ServiceApp:
        seen.update(service=service, subscribes=subscribes, handler=handler)
        readiness = Readiness()
        return ServiceApp(service, health_app(service, readiness), readiness)

    monkeypatch.setattr(wiring, "consumer_service", consumer_service)
    return seen


class SlowLoadingPrompts(FakePromptClassifier):
    """Loads only when the test says so, like a model that takes seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def load(self) -> None:
        asyncio.run_coroutine_threadsafe(self.release.wait(), self.loop).result(timeout=5)
        super().load()


async def test_ready_only_once_the_models_are_loaded(
    settings: SafetySettings,
    seen: dict[str, Any],
) -> None:
    prompts = SlowLoadingPrompts()
    app = wiring.bootstrap(
        settings,
        publisher=InMemoryPublisher(),
        prompt_classifier=prompts,
        image_classifier=FakeImageClassifier(),
    )
    assert seen["service"] == "safety"
    assert seen["subscribes"] == ("imagegen.jobs.requested", "imagegen.jobs.generated")
    [warm] = app.tasks
    running = asyncio.create_task(warm(asyncio.Event()))
    await asyncio.sleep(0.05)
    assert await app.readiness.evaluate() == {"models": False}
    prompts.release.set()
    await asyncio.wait_for(running, 5)
    assert await app.readiness.evaluate() == {"models": True}


async def test_the_wired_handler_publishes_verdicts(
    settings: SafetySettings,
    seen: dict[str, Any],
) -> None:
    publisher = InMemoryPublisher()
    wiring.bootstrap(
        settings,
        publisher=publisher,
        prompt_classifier=FakePromptClassifier(),
        image_classifier=FakeImageClassifier(),
    )
    cause = envelope_of(requested("job-1", "hardcore porn"))
    meta = RecordMeta("imagegen.jobs.requested", 0, 0, "job-1", {})
    await seen["handler"](cause, parse(cause), meta)
    [record] = publisher.records
    moderated = parse(record.envelope)
    assert isinstance(moderated, PromptModerated)
    assert (moderated.verdict, moderated.categories) == (Verdict.REJECTED, ("sexual",))


def test_real_classifiers_by_default_and_nothing_loaded_at_start(
    settings: SafetySettings,
    seen: dict[str, Any],
) -> None:
    captured: dict[str, Any] = {}
    real = wiring.make_handler

    def make_handler(
        publisher: object, prompts: Any, images: Any, s: object, r: Any, *rest: Any
    ) -> Any:
        captured.update(prompts=prompts, images=images, revocations=r)
        return real(publisher, prompts, images, s, r, *rest)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wiring, "make_handler", make_handler)
        app = wiring.bootstrap(settings, publisher=InMemoryPublisher())
    assert isinstance(captured["prompts"], MiniLmProfanityClassifier)
    assert isinstance(captured["images"], OpenNsfwClassifier)
    assert not captured["prompts"].loaded and not captured["images"].loaded
    assert isinstance(captured["revocations"]._log, KafkaRevocationLog)
    with TestClient(app.http) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"models": False}
