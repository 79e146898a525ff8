"""GET /files with valid, tampered, expired and malformed links (FastAPI TestClient)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from delivery_testkit import PNG, FakeClock, envelope_of, moderated, sha
from fastapi import FastAPI
from fastapi.testclient import TestClient

from imagegen_delivery import bootstrap as wiring
from imagegen_delivery.adapters.store import InMemoryBlobStore, LocalFileStore
from imagegen_delivery.adapters.webhook_store import InMemoryWebhookStore
from imagegen_delivery.adapters.webhooks import FakeWebhookSender
from imagegen_delivery.config import DeliverySettings
from imagegen_delivery.domain.links import sign, signed_url
from imagegen_delivery.entrypoints.http import make_http_app
from imagegen_delivery.service_layer.dispatch import WebhookDispatcher
from imagegen_delivery.service_layer.handlers import make_handlers
from imagegen_runtime.health import Readiness, add_health_routes
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_runtime.service import ServiceApp
from imagegen_schemas import parse
from imagegen_schemas.jobs import ImageDelivered, ImageModerated

pytestmark = pytest.mark.unit
NOW = 1_700_000_000
EXP = NOW + 3600


@pytest.fixture
def http(settings: DeliverySettings, clock: FakeClock) -> Iterator[TestClient]:
    store = InMemoryBlobStore({"memory:///src.png": PNG})
    store.copy_in("job-1", 0, "memory:///src.png", sha(PNG))
    with TestClient(make_http_app(store, settings, clock)) as client:
        yield client


def link(settings: DeliverySettings, job_id: str = "job-1", index: int = 0, exp: int = EXP) -> str:
    """The path and query of a signed link, as a client would request it."""
    key = settings.signing_key.get_secret_value().encode()
    url = urlsplit(signed_url(settings.public_base_url, job_id, index, exp, key))
    return f"{url.path}?{url.query}"


def test_a_valid_link_serves_the_png(
    http: TestClient, settings: DeliverySettings, clock: FakeClock
) -> None:
    clock.now = NOW
    r = http.get(link(settings))
    assert r.status_code == 200 and r.content == PNG
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "private, max-age=3600"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda u: u.replace("sig=", "sig=A"),  # the signature
        lambda u: u.replace(f"exp={EXP}", f"exp={EXP + 86400}"),  # a longer life
        lambda u: u.replace("/0.png", "/1.png"),  # another image with this image's signature
        lambda u: u.replace("job-1", "job-2"),  # another job
        lambda u: u.split("&sig=")[0],  # no signature
        lambda u: u.split("?")[0],  # no query at all
        lambda u: u.replace(f"exp={EXP}", "exp=-5"),  # not canonical seconds
        lambda u: u.replace(f"exp={EXP}", f"exp=0{EXP}"),
    ],
)
def test_a_tampered_link_is_403(
    http: TestClient, settings: DeliverySettings, clock: FakeClock, tamper: object
) -> None:
    clock.now = NOW
    r = http.get(tamper(link(settings)))  # type: ignore[operator]
    assert r.status_code == 403


@pytest.mark.parametrize("at", [EXP, EXP + 1, EXP + 86400])
def test_an_expired_link_is_410(
    http: TestClient, settings: DeliverySettings, clock: FakeClock, at: int
) -> None:
    clock.now = at
    assert http.get(link(settings)).status_code == 410


def test_a_signed_link_to_a_file_not_stored_is_404(
    http: TestClient, settings: DeliverySettings, clock: FakeClock
) -> None:
    clock.now = NOW
    assert http.get(link(settings, index=1)).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/files/../job-1/0.png",
        "/files/job-1/../0.png",
        "/files/job-1/..%2F..%2Fetc%2Fpasswd",
        "/files/%2E%2E/0.png",
        "/files/job-1/00.png",
        "/files/job-1/0.PNG",
        "/files/job-1/.delivery.json",
        "/files/a.b/0.png",
        "/files/job-1/0.png/x",
        "/files/job-1/-1.png",
    ],
)
def test_paths_outside_the_store_shape_are_404(
    http: TestClient, settings: DeliverySettings, path: str
) -> None:
    key = settings.signing_key.get_secret_value().encode()
    # Even with a "valid" signature over the raw path, the shape is checked first.
    r = http.get(path, params={"exp": EXP, "sig": sign(path, EXP, key)})
    assert r.status_code == 404


def test_bootstrap_hands_the_files_app_to_the_runtime(
    settings: DeliverySettings,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # consumer_service builds Kafka clients; stand in for it to see what bootstrap hands over.
    seen: dict[str, Any] = {}

    def consumer_service(
        settings: object,
        service: str,
        subscribes: tuple[str, ...],
        handler: object,
        publisher: object,
        *,
        http: FastAPI,
    ) -> ServiceApp:
        seen.update(service=service, subscribes=subscribes)
        readiness = Readiness()
        add_health_routes(http, service, readiness)
        return ServiceApp(service, http, readiness)

    monkeypatch.setattr(wiring, "consumer_service", consumer_service)
    store = InMemoryBlobStore({"memory:///src.png": PNG})
    store.copy_in("job-1", 0, "memory:///src.png", sha(PNG))
    clock.now = NOW
    app = wiring.bootstrap(
        settings,
        publisher=InMemoryPublisher(),  # type: ignore[arg-type]
        store=store,
        hooks=InMemoryWebhookStore(),
        clock=clock,
    )
    assert seen["service"] == "delivery"
    assert "imagegen.webhooks.retry" in seen["subscribes"]
    assert len(app.on_shutdown) == 1  # the webhook sender's close
    # the webhook dispatcher and the retention sweeper of the store (docs/storage.md)
    assert [t.__qualname__ for t in app.tasks] == [
        "WebhookDispatcher.run",
        "retention_sweeper[delivery]",
    ]
    with TestClient(app.http) as client:
        assert client.get("/healthz").json() == {"status": "ok", "service": "delivery"}
        assert client.get(link(settings)).content == PNG


async def test_the_published_link_downloads_the_delivered_image(
    settings: DeliverySettings,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    # Handler and HTTP app over one LocalFileStore: what the event says is what the link serves.
    blobs = tmp_path / "blobs"

    def put(name: str, data: bytes) -> str:
        (blobs / name).parent.mkdir(parents=True, exist_ok=True)
        (blobs / name).write_bytes(data)
        return (blobs / name).as_uri()

    store = LocalFileStore(settings.store_dir, source_root=blobs)
    publisher = InMemoryPublisher()
    hooks, sender = InMemoryWebhookStore(), FakeWebhookSender()
    timer = WebhookDispatcher(hooks, sender, publisher, schedule=(), clock=clock)
    handlers = make_handlers(publisher, store, hooks, timer, settings, clock)
    env = envelope_of(moderated("job-9", put, n=2))
    await handlers[ImageModerated](env, parse(env))
    event = parse(publisher.records[0].envelope)
    assert isinstance(event, ImageDelivered)
    with TestClient(make_http_app(store, settings, clock)) as client:
        for image in event.images:
            url = urlsplit(image.url)
            r = client.get(f"{url.path}?{url.query}")
            assert r.status_code == 200 and sha(r.content) == image.sha256
