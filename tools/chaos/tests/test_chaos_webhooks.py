"""The soak's webhook receiver: it verifies calls as a Standard Webhooks receiver would, with the
secrets of the user its URL names, and records what the checker needs."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from imagegen_chaos.clients import User, webhook_url_for
from imagegen_chaos.history import WebhookCall
from imagegen_chaos.webhooks import WebhookReceiver, user_of, verify
from imagegen_delivery.domain.webhook import outcome_of, webhook_headers
from imagegen_schemas.jobs import GenerationCancelled

pytestmark = pytest.mark.unit


def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


S1, S2 = secret(), secret()
BODY = json.dumps(
    {"type": "generation.cancelled", "event_id": "e1", "job_id": "j1", "data": {"at_step": 2}},
    separators=(",", ":"),
)


def signed(body: str, key: str, msg_id: str = "e1", at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(key).sign(msg_id, at, body),
    }


def test_a_call_signed_with_the_users_secret_verifies() -> None:
    assert verify([S1], BODY.encode(), signed(BODY, S1))


def test_a_tampered_call_does_not_verify() -> None:
    headers = signed(BODY, S1)
    assert not verify([S1], BODY.replace('"at_step":2', '"at_step":3').encode(), headers)
    assert not verify([S1], BODY.encode(), {**headers, "webhook-id": "e2"})
    later = str(int(headers["webhook-timestamp"]) + 1)
    assert not verify([S1], BODY.encode(), {**headers, "webhook-timestamp": later})


def test_another_users_secret_an_old_call_or_garbage_does_not_verify() -> None:
    assert not verify([S2], BODY.encode(), signed(BODY, S1))
    old = datetime.now(UTC) - timedelta(minutes=10)  # past the library's 5-minute tolerance
    assert not verify([S1], BODY.encode(), signed(BODY, S1, at=old))
    headers = signed(BODY, S1)
    assert not verify([S1], BODY.encode(), {**headers, "webhook-signature": "garbage"})
    assert not verify([S1], BODY.encode(), {**headers, "webhook-signature": "v1,!!notb64"})
    assert not verify([S1], BODY.encode(), {})
    assert not verify([], BODY.encode(), headers)


def test_during_a_rotation_either_secret_verifies() -> None:
    """Delivery signs with every active secret, space-separated (docs/adr/0403)."""
    headers = signed(BODY, S2)
    headers["webhook-signature"] += " " + Webhook(S1).sign("e1", datetime.now(UTC), BODY)
    assert verify([S1], BODY.encode(), headers)
    assert verify([S2], BODY.encode(), headers)


def test_what_delivery_sends_verifies() -> None:
    """The body and headers delivery's domain builds for a cancelled job."""
    now = datetime.now(UTC)
    outcome = outcome_of(GenerationCancelled(job_id="j1", at_step=2), "e9", "j1", now)
    assert outcome is not None
    headers = webhook_headers(outcome.message_id, now, outcome.body, [S2, S1])
    assert verify([S1], outcome.body.encode(), headers)
    assert not verify([secret()], outcome.body.encode(), headers)


def test_the_user_is_read_from_the_url_the_jobs_named() -> None:
    user = User("c1-u0", "pro", "key")
    url = webhook_url_for("http://127.0.0.1:9/hook/", user)
    assert url == "http://127.0.0.1:9/hook/c1-u0"
    assert user_of("/hook/c1-u0") == "c1-u0"
    assert user_of("/hook/a%2Fb?x=1") == "a/b"
    assert user_of("/c1-u0") == "c1-u0"  # --webhook-url with no path of its own
    assert user_of("/") is None


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver("127.0.0.1", 0, {"u1": [S1]}, fail_share=0.0, seed=1)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def post(r: WebhookReceiver, user: str, body: str, headers: dict[str, str]) -> int:
    url = f"http://127.0.0.1:{r.port}/hook/{user}"
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def test_the_receiver_records_verified_and_unverified_calls(receiver: WebhookReceiver) -> None:
    assert post(receiver, "u1", BODY, signed(BODY, S1)) == 200
    assert post(receiver, "u1", BODY, signed(BODY, S2)) == 200  # another user's secret
    assert post(receiver, "u9", BODY, signed(BODY, S1)) == 200  # a user it has no secret of
    at = [c.at for c in receiver.calls]
    assert receiver.calls == [
        WebhookCall(at[0], "j1", "e1", "e1", "generation.cancelled", True, 200, "u1"),
        WebhookCall(at[1], "j1", "e1", "e1", "generation.cancelled", False, 200, "u1"),
        WebhookCall(at[2], "j1", "e1", "e1", "generation.cancelled", None, 200, "u9"),
    ]
    assert receiver.acknowledged() == {"j1"}


def test_the_receiver_fails_its_share_of_calls_and_those_are_not_acknowledged() -> None:
    r = WebhookReceiver("127.0.0.1", 0, {"u1": [S1]}, fail_share=1.0, seed=1)
    r.start()
    try:
        assert post(r, "u1", BODY, signed(BODY, S1)) == 503
        assert post(r, "u1", "not json", signed("not json", S1)) == 503
    finally:
        r.stop()
    first, second = r.calls
    assert (first.signature_ok, first.answered, first.job_id) == (True, 503, "j1")
    assert (second.signature_ok, second.job_id, second.type) == (True, None, None)
    assert r.acknowledged() == set()


def test_the_chaos_stack_gives_delivery_a_retry_schedule_it_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegen_chaos.stack import ChaosStack
    from imagegen_delivery.config import DeliverySettings

    env = ChaosStack(tmp_path, webhook_retry_schedule_s=(0.5, 3.0)).env()
    monkeypatch.setenv(
        "IMAGEGEN_DELIVERY_WEBHOOK_RETRY_SCHEDULE_S",
        env["IMAGEGEN_DELIVERY_WEBHOOK_RETRY_SCHEDULE_S"],
    )
    monkeypatch.setenv("IMAGEGEN_DELIVERY_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("IMAGEGEN_DELIVERY_SIGNING_KEY", "k" * 32)
    monkeypatch.setenv("IMAGEGEN_DELIVERY_DATABASE_URL", "postgresql+asyncpg://u:p@127.0.0.1:1/d")
    assert DeliverySettings().webhook_retry_schedule_s == (0.5, 3.0)
