"""LoRAs through the whole stack, as a client sees them: listed by /v1/models, applied by
weight (0 gives the bytes of no LoRA, 1 differs, two compose), refused by name with 422 when
unknown or of another family (issue 12)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .conftest import RunningStack

pytestmark = pytest.mark.e2e
MODEL = "tiny-sd15"
INK, GLOW, XL_INK = "tiny-sd15-lora-ink", "tiny-sd15-lora-glow", "tiny-sdxl-lora-ink"


def image(stack: RunningStack, loras: list[dict[str, Any]]) -> bytes:
    body = {"prompt": "a red circle", "model": MODEL, "steps": 4, "seed": 11, "loras": loras}
    return stack.delivered_png(body)


def test_loras_are_listed_with_their_family(stack: RunningStack) -> None:
    with stack.client() as c:
        listed = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    for lora, family in ((INK, "sd15"), (GLOW, "sd15"), (XL_INK, "sdxl")):
        assert (listed[lora]["kind"], listed[lora]["family"]) == ("lora", family)


def test_a_loras_weight_changes_the_image_and_weight_0_is_no_lora(stack: RunningStack) -> None:
    asks = {
        "none": [],
        "ink 0": [{"name": INK, "weight": 0.0}],
        "ink 1": [{"name": INK, "weight": 1.0}],
        "glow 1": [{"name": GLOW, "weight": 1.0}],
        "ink 1 + glow 1": [{"name": INK, "weight": 1.0}, {"name": GLOW, "weight": 1.0}],
    }
    with ThreadPoolExecutor(5) as pool:
        got = dict(
            zip(asks, pool.map(lambda loras: image(stack, loras), asks.values()), strict=False)
        )
    assert got["ink 0"] == got["none"]
    assert len({got[k] for k in ("none", "ink 1", "glow 1", "ink 1 + glow 1")}) == 4
    assert image(stack, []) == got["none"]  # no LoRA leaks into a later job


@pytest.mark.parametrize(
    ("lora", "words"),
    [("no-such-lora", "unknown LoRA"), (XL_INK, "is for sdxl models; model 'tiny-sd15' is sd15")],
)
def test_an_unknown_or_foreign_lora_is_refused_by_name(
    stack: RunningStack, lora: str, words: str
) -> None:
    body = {"prompt": "a red circle", "model": MODEL, "loras": [{"name": lora}]}
    with stack.client() as c:
        r = c.post("/v1/generations", json=body)
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "loras", 0, "name"] and words in problem["msg"]
