"""Issue 14: webhook URLs aimed at loopback, internal or metadata addresses, other schemes and
URLs with credentials were accepted (202) and later POSTed to. Now: 422 naming ``webhook_url``
with the reason, and nothing published (docs/adr/0404)."""

from __future__ import annotations

import pytest
from api_testkit import Api

pytestmark = pytest.mark.unit
BODY = {"prompt": "a red circle", "steps": 2}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8101/metrics", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://0x7f000001/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://user:secret@hooks.example.com/hook", "credentials"),
    ],
)
async def test_forbidden_webhook_url_is_422_and_nothing_is_published(
    api: Api, url: str, reason: str
) -> None:
    r = await api.client.post(
        "/v1/generations", json={**BODY, "webhook_url": url}, headers=api.auth()
    )
    assert r.status_code == 422, r.text
    errors = [e for e in r.json()["detail"] if e["loc"][-1] == "webhook_url"]
    assert errors and reason in errors[0]["msg"], r.text
    assert api.publisher.records == []


async def test_public_webhook_url_is_accepted(api: Api) -> None:
    r = await api.client.post(
        "/v1/generations",
        json={**BODY, "webhook_url": "https://hooks.example.com/h"},
        headers=api.auth(),
    )
    assert r.status_code == 202, r.text


async def test_allow_list_admits_a_loopback_receiver(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGEN_API_WEBHOOK_ALLOW", "127.0.0.0/8")
    r = await api.client.post(
        "/v1/generations",
        json={**BODY, "webhook_url": "http://127.0.0.1:9/hook"},
        headers=api.auth(),
    )
    assert r.status_code == 202, r.text
