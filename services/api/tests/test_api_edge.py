"""Malformed input is answered 4xx at the edge, naming the field and the reason; never a 500.

Each case failed before the edge rules (issue 10): a NUL byte was accepted (202) and then could not
be stored; NaN, a lone surrogate, ``%00`` in a path and a bad ``Last-Event-ID`` were 500s.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from api_testkit import Api

pytestmark = pytest.mark.unit
BODY = {"prompt": "a red circle", "steps": 2}


def names(r: httpx.Response, field: str, reason: str) -> bool:
    """The 422 body names ``field`` (last element of some loc) with ``reason`` in its message."""
    return any(
        str(e["loc"][-1]).lower() == field.lower() and reason in e["msg"].lower()
        for e in r.json()["detail"]
    )


async def post_raw(api: Api, raw: str | bytes) -> httpx.Response:
    headers = {**api.auth(), "Content-Type": "application/json"}
    return await api.client.post("/v1/generations", content=raw, headers=headers)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompt": "a red\x00circle"}, "prompt"),
        ({"prompt": "a red circle\x07"}, "prompt"),
        ({"negative_prompt": "blur\x00"}, "negative_prompt"),
        ({"model": "shapes-demo\x00"}, "model"),
        ({"scheduler": "ddim\x1b"}, "scheduler"),
        ({"loras": [{"name": "ink\x00"}]}, "name"),
        ({"controlnets": [{"type": "canny", "image": "file:///a\x00.png"}]}, "image"),
    ],
)
async def test_control_characters_in_a_string_are_422(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    r = await api.client.post("/v1/generations", json={**BODY, **changes}, headers=api.auth())
    assert r.status_code == 422, r.text
    assert names(r, field, "control character"), r.text
    assert api.publisher.records == []


async def test_newlines_and_tabs_in_a_prompt_are_fine(api: Api) -> None:
    r = await api.client.post(
        "/v1/generations",
        json={**BODY, "prompt": "a red circle,\n\ta blue square"},
        headers=api.auth(),
    )
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"prompt": "a", "guidance_scale": NaN}', "guidance_scale"),
        ('{"prompt": "a", "guidance_scale": Infinity}', "guidance_scale"),
        ('{"prompt": "a", "steps": -Infinity}', "steps"),
        ('{"prompt": NaN}', "prompt"),
        ('{"prompt": "a", "loras": [{"name": "ink", "weight": NaN}]}', "weight"),
    ],
)
async def test_nan_and_infinity_are_422_naming_the_field(api: Api, raw: str, field: str) -> None:
    r = await post_raw(api, raw)
    assert r.status_code == 422, r.text
    assert any(str(e["loc"][-1]) == field for e in r.json()["detail"]), r.text


async def test_a_lone_surrogate_in_the_prompt_is_422(api: Api) -> None:
    r = await post_raw(api, '{"prompt": "a red \\ud800 circle"}')
    assert r.status_code == 422, r.text
    assert names(r, "prompt", "unicode"), r.text


async def test_bytes_that_are_not_utf8_are_4xx(api: Api) -> None:
    r = await post_raw(api, b'{"prompt": "a red \xff circle"}')
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("job_id", ["%00", "a%00b", "x" * 65, "a%20b"])
async def test_a_malformed_job_id_in_the_path_is_422(api: Api, method: str, job_id: str) -> None:
    r = await api.client.request(method, f"/v1/generations/{job_id}", headers=api.auth())
    assert r.status_code == 422, r.text
    assert any(e["loc"] == ["path", "job_id"] for e in r.json()["detail"]), r.text


async def test_a_malformed_job_id_on_the_events_stream_is_422(api: Api) -> None:
    r = await api.client.get("/v1/generations/%00/events", headers=api.auth())
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("last_event_id", ["abc", "\u00b2", "1.5", "-1", "9" * 30])
async def test_a_bad_last_event_id_is_422(api: Api, last_event_id: str) -> None:
    r = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    await api.project()
    url = f"/v1/generations/{r.json()['id']}/events"
    got = await api.client.get(url, headers={**api.auth(), "Last-Event-ID": last_event_id.encode()})
    assert got.status_code == 422, got.text
    assert names(got, "last-event-id", "digits"), got.text


async def test_the_events_stream_resumes_after_a_good_last_event_id(api: Api) -> None:
    r = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    job_id = r.json()["id"]
    from imagegen_schemas.jobs import GenerationCancelled

    await api.publisher.publish(GenerationCancelled(job_id=job_id), key=job_id)
    await api.project()
    async with api.client.stream(
        "GET", f"/v1/generations/{job_id}/events", headers={**api.auth(), "Last-Event-ID": "1"}
    ) as got:
        text = (await got.aread()).decode()
    assert got.status_code == 200
    assert "event: accepted" not in text and "event: cancelled" in text, text
    assert json.loads(text.split("data: ", 1)[1].split("\n")[0]) == {}
