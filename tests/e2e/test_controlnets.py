"""ControlNets through the whole stack, as a client sees them: listed by /v1/models with their
type and family; a control image sent as a data: URI or uploaded to POST /v1/files; weight 0
gives the bytes of no ControlNet, weight 1 and a second net change the image; bad control images
and foreign types are 422 naming the field, and nothing is published (issue 12)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image, ImageDraw

from .conftest import RunningStack
from .test_generation import total_records

pytestmark = pytest.mark.e2e
MODEL = "tiny-sd15"


def square_png() -> bytes:
    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).rectangle((16, 16, 47, 47), fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image(stack: RunningStack, controlnets: list[dict[str, Any]]) -> bytes:
    body = {"prompt": "a black square", "model": MODEL, "steps": 3, "seed": 7}
    body["controlnets"] = controlnets  # type: ignore[assignment]
    return stack.delivered_png(body)


def test_controlnets_are_listed_with_their_type_and_family(stack: RunningStack) -> None:
    with stack.client() as c:
        listed = [m for m in c.get("/v1/models").json()["data"] if m["kind"] == "controlnet"]
    kinds = {(m["family"], m["controlnet_type"]) for m in listed}
    assert {("sd15", "canny"), ("sd15", "tile"), ("sdxl", "canny")} <= kinds


def test_a_controlnet_changes_the_image_and_weight_0_is_none(stack: RunningStack) -> None:
    png = square_png()
    with stack.client() as c:
        up = c.post(
            "/v1/files",
            files={"file": ("square.png", png, "image/png")},
            data={"purpose": "control_image"},
        )
    assert up.status_code == 200, up.text
    file_id = up.json()["id"]
    assert file_id.startswith("file-") and up.json()["bytes"] == len(png)
    asks = {
        "none": [],
        "canny 0": [{"type": "canny", "image_uri": data_uri(png), "weight": 0.0}],
        "canny 1": [{"type": "canny", "image_uri": data_uri(png), "weight": 1.0}],
        "canny 1 + tile (uploaded)": [
            {"type": "canny", "image_uri": data_uri(png), "weight": 1.0},
            {"type": "tile", "image_uri": file_id, "weight": 0.5, "end_percent": 0.5},
        ],
    }
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(asks, pool.map(lambda cn: image(stack, cn), asks.values()), strict=True))
    assert got["canny 0"] == got["none"]
    assert len({got[k] for k in ("none", "canny 1", "canny 1 + tile (uploaded)")}) == 3


@pytest.mark.parametrize(
    ("controlnet", "loc", "words"),
    [
        ({"type": "canny", "image_uri": "data:image/png;base64,bm90IGFuIGltYWdl"}, "image_uri", ""),
        ({"type": "canny", "image_uri": "file:///etc/passwd"}, "image_uri", ""),
        ({"type": "canny", "image_uri": "file-" + "0" * 32}, "image_uri", ""),
        ({"type": "no-such", "image_uri": "file-" + "0" * 32}, "type", "no-such"),
    ],
    ids=["undecodable", "a path", "unknown file", "unknown type"],
)
def test_a_bad_control_image_or_type_is_refused_by_field_and_nothing_is_published(
    stack: RunningStack, controlnet: dict[str, Any], loc: str, words: str
) -> None:
    before = total_records(stack, "imagegen.jobs.requested")
    body = {"prompt": "a black square", "model": MODEL, "controlnets": [controlnet]}
    with stack.client() as c:
        r = c.post("/v1/generations", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(
        d["loc"][:4] == ["body", "controlnets", 0, loc] and words in d["msg"] for d in detail
    ), detail
    assert total_records(stack, "imagegen.jobs.requested") == before
