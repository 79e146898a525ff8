"""POST /v1/images/generations: every malformed body is a 4xx in OpenAI's error shape.

Before (issue 10) each of these was a 500, and an unknown ``model`` was silently swapped for the
default one.
"""

from __future__ import annotations

import pytest
from api_testkit import Api

pytestmark = pytest.mark.unit
URL = "/v1/images/generations"


@pytest.mark.parametrize(
    ("raw", "param", "words"),
    [
        ("this is not json", None, "JSON"),
        ('{"prompt": "a", ', None, "JSON"),
        ('["a red circle"]', None, "object"),
        ('"a red circle"', None, "object"),
        ('{"prompt": 5}', "prompt", "string"),
        ('{"prompt": "a", "n": "two"}', "n", "integer"),
        ('{"prompt": "a", "n": 0}', "n", "greater than or equal to 1"),
        ('{"prompt": "a", "n": 99}', "n", "less than or equal to 4"),
        ('{"prompt": "a", "size": "big"}', "size", "WIDTHxHEIGHT"),
        ('{"prompt": "a", "size": "64x64x64"}', "size", "WIDTHxHEIGHT"),
        ('{"prompt": "a", "size": 64}', "size", "string"),
        ('{"prompt": "a", "size": "4096x4096"}', "size", "within"),
        ('{"prompt": "a", "response_format": "gif"}', "response_format", "url"),
        ("{}", "prompt", "required"),
        ('{"n": 1}', "prompt", "required"),
        ('{"prompt": "' + "a" * 5000 + '"}', "prompt", "at most 2000"),
        ('{"prompt": "a\\u0000b"}', "prompt", "control character"),
        ('{"prompt": "a \\ud800 b"}', "prompt", "unicode"),
        ('{"prompt": "a", "steps": NaN}', "steps", ""),
        ('{"prompt": "a", "seed": -1}', "seed", "greater than or equal to 0"),
    ],
)
async def test_a_malformed_body_is_400_naming_the_param(
    api: Api, raw: str, param: str | None, words: str
) -> None:
    headers = {**api.auth(), "Content-Type": "application/json"}
    r = await api.client.post(URL, content=raw, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert words in error["message"], error
    assert api.publisher.records == []


async def test_an_unknown_model_is_refused_by_name_not_swapped(api: Api) -> None:
    r = await api.client.post(
        URL, json={"prompt": "a red circle", "model": "dall-e-3"}, headers=api.auth()
    )
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "dall-e-3" in error["message"] and "shapes-demo" in error["message"]
    assert api.publisher.records == []


async def test_a_missing_key_is_401_in_openai_shape(api: Api) -> None:
    r = await api.client.post(URL, json={"prompt": "a red circle"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_request_error"
