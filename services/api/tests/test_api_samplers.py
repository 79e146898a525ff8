"""A sampler the model cannot run is refused (422) naming the pair, not accepted to fail 3 times.

``dpmpp_2m_karras`` on the shipped demo model raises IndexError inside diffusers' DPM-Solver
(karras sigmas on its schedule); before (issue 10) the API accepted it and the job failed.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from api_testkit import make_app, make_deps

from imagegen_api.adapters.catalog import load_catalog
from imagegen_schemas import Plan

pytestmark = pytest.mark.unit
MODELS = Path(__file__).resolve().parents[3] / "models"


@pytest.mark.skipif(not (MODELS / "shapes-demo" / "model.json").exists(), reason="no demo model")
async def test_dpmpp_2m_karras_on_the_demo_model_is_422_naming_the_pair() -> None:
    deps = make_deps(catalog=load_catalog(MODELS))
    key = await deps.accounts.create_key("alice", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        auth = {"Authorization": f"Bearer {key}"}
        body = {"prompt": "a red circle", "model": "shapes-demo", "steps": 2}
        bad = await client.post(
            "/v1/generations", json={**body, "scheduler": "dpmpp_2m_karras"}, headers=auth
        )
        good = await client.post(
            "/v1/generations", json={**body, "scheduler": "euler"}, headers=auth
        )
    assert bad.status_code == 422, bad.text
    [problem] = bad.json()["detail"]
    assert problem["loc"] == ["body", "scheduler"]
    assert "dpmpp_2m_karras" in problem["msg"] and "shapes-demo" in problem["msg"]
    assert good.status_code == 202, good.text


def test_model_json_may_list_its_samplers(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(
        '{"id": "m", "family": "sd15", "samplers": ["ddim", "euler"]}'
    )
    assert load_catalog(tmp_path).models["m"].samplers == frozenset({"ddim", "euler"})
