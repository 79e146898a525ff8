"""GET /v1/models: OpenAI's Models API shape (the official client reads it) plus our fields,
built from the registered manifests; and the model's defaults fill a request that gives none."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from api_testkit import Api, make_app, make_deps
from openai import AsyncOpenAI, NotFoundError

from imagegen_api.adapters.catalog import load_catalog
from imagegen_schemas import Plan

pytestmark = pytest.mark.unit


def register(models: Path, doc: dict[str, object]) -> None:
    folder = models / str(doc["id"])
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(doc))


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    register(
        tmp_path,
        {
            "id": "shapes-demo",
            "family": "sd15",
            "default_size": 64,
            "tier": 1,
            "default_steps": 25,
            "default_guidance": 5.0,
            "created": 1764547200,
        },
    )
    register(
        tmp_path,
        {
            "id": "tiny-flux",
            "family": "flux",
            "default_size": 64,
            "tier": 3,
            "default_steps": 4,
            "default_guidance": 3.5,
            "created": 1764547200,
            "samplers": ["euler", "dpmpp_2m"],
        },
    )
    register(tmp_path, {"id": "ink", "kind": "lora", "family": "sd15", "created": 1764547200})
    register(
        tmp_path,
        {
            "id": "sd15-canny",
            "kind": "controlnet",
            "family": "sd15",
            "controlnet_type": "canny",
            "created": 1764547200,
        },
    )
    return tmp_path


@pytest.fixture
async def api(models_dir: Path) -> Api:  # type: ignore[misc]
    deps = make_deps(catalog=load_catalog(models_dir))
    key = await deps.accounts.create_key("alice", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield Api(client, deps, deps.publisher, key)  # type: ignore[arg-type]


async def test_the_list_has_openais_fields_and_ours(api: Api) -> None:
    r = await api.client.get("/v1/models", headers=api.auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert list(by_id) == ["shapes-demo", "tiny-flux", "sd15-canny", "ink"]
    for entry in body["data"]:
        assert entry["object"] == "model" and entry["owned_by"] == "imagegen"
        assert entry["created"] == 1764547200
    flux = by_id["tiny-flux"]
    assert (flux["kind"], flux["family"], flux["tier"]) == ("base", "flux", 3)
    assert (flux["default_size"], flux["default_steps"], flux["default_guidance"]) == (64, 4, 3.5)
    assert flux["samplers"] == ["euler", "dpmpp_2m"]  # the platform's order
    assert flux["default_sampler"] == "euler"  # no ddim on this model
    assert by_id["shapes-demo"]["default_sampler"] == "ddim"
    assert "dpmpp_2m_karras" not in by_id["shapes-demo"]["samplers"]
    assert by_id["ink"] == {
        "id": "ink",
        "object": "model",
        "created": 1764547200,
        "owned_by": "imagegen",
        "kind": "lora",
        "family": "sd15",
    }
    assert by_id["sd15-canny"]["controlnet_type"] == "canny"


async def test_the_official_client_lists_and_retrieves(api: Api) -> None:
    client = AsyncOpenAI(
        api_key=api.key, base_url="http://api.test/v1", http_client=api.client, max_retries=0
    )
    listed = [m.id async for m in client.models.list()]
    assert listed == ["shapes-demo", "tiny-flux", "sd15-canny", "ink"]
    flux = await client.models.retrieve("tiny-flux")
    assert flux.owned_by == "imagegen" and flux.model_extra["family"] == "flux"  # type: ignore[index]
    with pytest.raises(NotFoundError, match="dall-e-3"):
        await client.models.retrieve("dall-e-3")


async def test_listing_needs_a_key(api: Api) -> None:
    r = await api.client.get("/v1/models")
    assert r.status_code == 401


async def test_a_request_without_steps_guidance_or_sampler_gets_the_models(api: Api) -> None:
    r = await api.client.post(
        "/v1/generations", json={"prompt": "a red circle", "model": "tiny-flux"}, headers=api.auth()
    )
    assert r.status_code == 202, r.text
    [record] = api.publisher.records
    params = record.envelope.data["params"]
    assert (params["steps"], params["guidance_scale"], params["scheduler"]) == (4, 3.5, "euler")


async def test_a_sampler_the_model_cannot_run_is_422_naming_the_pair(api: Api) -> None:
    r = await api.client.post(
        "/v1/generations",
        json={"prompt": "a red circle", "model": "tiny-flux", "scheduler": "ddim"},
        headers=api.auth(),
    )
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "scheduler"]
    assert "'ddim' cannot run on model 'tiny-flux'" in problem["msg"]
    assert api.publisher.records == []


def test_a_tiny_model_keeps_its_own_size_within_its_familys_range(models_dir: Path) -> None:
    flux = load_catalog(models_dir).models["tiny-flux"]
    assert flux.min_size <= 64 <= flux.max_size
