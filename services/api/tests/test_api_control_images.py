"""Control images at the API (ADR 0706): a ``data:`` URI or a file id from ``POST /v1/files``.

The decoded image is stored in the files folder the workers read, and the event carries its
file id (``file-`` + 32 hex digits of its sha256), never the data. Every bad image is a 422
naming ``controlnets[i].image_uri`` (or the upload's field) and the reason, with nothing
published and nothing stored.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_testkit import CATALOG, Api, make_app, make_deps

from imagegen_api.adapters.files import LocalFileStore
from imagegen_api.domain.plans import Plan
from imagegen_api.domain.validation import AdapterInfo, Catalog, ModelInfo
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import parse
from imagegen_schemas.jobs import GenerationRequested

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.unit
CAP = 4096  # bytes: a small cap so that an oversized image is cheap to make

NETS = Catalog(
    models={
        "shapes-demo": ModelInfo("shapes-demo", "sd15", 64, 256, 64),
        "xl": ModelInfo("xl", "sdxl", 64, 256, 64),
    },
    loras=CATALOG.loras,
    controlnets=frozenset({"canny", "tile", "depth"}),
    adapters=(
        AdapterInfo("sd15-canny", "controlnet", "sd15", controlnet_type="canny"),
        AdapterInfo("sd15-tile", "controlnet", "sd15", controlnet_type="tile"),
        AdapterInfo("xl-depth", "controlnet", "sdxl", controlnet_type="depth"),
    ),
)


def png(seed: int = 0, side: int = 16) -> bytes:
    image = Image.new("RGB", (side, side), (seed * 40 % 256, 80, 160))
    image.putpixel((seed % side, 3), (255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def noisy_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((side, side), 100).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def file_id(data: bytes) -> str:
    return "file-" + hashlib.sha256(data).hexdigest()[:32]


@pytest.fixture()
async def files_api(tmp_path: Path) -> AsyncIterator[Api]:
    deps = make_deps(
        catalog=NETS, files=LocalFileStore(tmp_path / "files"), max_control_image_bytes=CAP
    )
    key = await deps.accounts.create_key("u-pro", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        assert isinstance(deps.publisher, InMemoryPublisher)
        yield Api(client, deps, deps.publisher, key)


def body(*nets: dict[str, Any], model: str = "shapes-demo") -> dict[str, Any]:
    return {"prompt": "a red circle", "model": model, "steps": 2, "controlnets": list(nets)}


def stored(tmp_path: Path) -> list[str]:
    folder = tmp_path / "files"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def published_params(api: Api) -> Any:
    (record,) = api.publisher.records
    payload = parse(record.envelope)
    assert isinstance(payload, GenerationRequested)
    return payload.params


def problem(r: httpx.Response, loc: list[Any]) -> str:
    assert r.status_code == 422, r.text
    found = [d["msg"] for d in r.json()["detail"] if d["loc"] == ["body", *loc]]
    assert found, r.json()
    return str(found[0])


async def test_a_data_uri_is_stored_and_the_event_carries_its_file_id(
    files_api: Api, tmp_path: Path
) -> None:
    data = png(1)
    net = {"type": "canny", "image_uri": data_uri(data), "weight": 0.8, "end_percent": 0.5}
    r = await files_api.client.post("/v1/generations", json=body(net), headers=files_api.auth())
    assert r.status_code == 202, r.text
    (spec,) = published_params(files_api).controlnets
    assert (spec.type, spec.image_uri, spec.weight, spec.end_percent) == (
        "canny",
        file_id(data),
        0.8,
        0.5,
    )
    assert (tmp_path / "files" / file_id(data)).read_bytes() == data


async def test_an_uploaded_file_is_named_by_its_id(files_api: Api, tmp_path: Path) -> None:
    data = png(2)
    r = await files_api.client.post(
        "/v1/files",
        files={"file": ("edges.png", data, "image/png")},
        data={"purpose": "control_image"},
        headers=files_api.auth(),
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc == {
        "id": file_id(data),
        "object": "file",
        "bytes": len(data),
        "created_at": doc["created_at"],
        "filename": "edges.png",
        "purpose": "control_image",
    }
    assert isinstance(doc["created_at"], int)
    assert stored(tmp_path) == [file_id(data)]
    nets = ({"type": "canny", "image_uri": doc["id"]}, {"type": "tile", "image": doc["id"]})
    r = await files_api.client.post("/v1/generations", json=body(*nets), headers=files_api.auth())
    assert r.status_code == 202, r.text
    assert [c.image_uri for c in published_params(files_api).controlnets] == [doc["id"]] * 2


async def test_an_upload_needs_an_api_key(files_api: Api, tmp_path: Path) -> None:
    r = await files_api.client.post(
        "/v1/files",
        files={"file": ("a.png", png(3), "image/png")},
        data={"purpose": "control_image"},
    )
    assert r.status_code == 401
    assert stored(tmp_path) == []


@pytest.mark.parametrize(
    ("upload", "purpose", "field", "reason"),
    [
        (noisy_png(64), "control_image", "file", f"larger than {CAP} bytes"),
        (b"GIF89a not really", "control_image", "file", "undecodable"),
        (png(4)[:40], "control_image", "file", "undecodable"),
        (None, "control_image", "file", "missing"),
        (png(5), "fine-tune", "purpose", "must be 'control_image'"),
        (png(5), None, "purpose", "must be 'control_image'"),
    ],
    ids=["oversized", "not-an-image", "truncated", "no-file", "wrong-purpose", "no-purpose"],
)
async def test_a_bad_upload_is_422_naming_the_field_and_stores_nothing(
    files_api: Api,
    tmp_path: Path,
    upload: bytes | None,
    purpose: str | None,
    field: str,
    reason: str,
) -> None:
    r = await files_api.client.post(
        "/v1/files",
        files={"file": ("a.png", upload, "image/png")} if upload is not None else {"x": ("a", b"")},
        data={"purpose": purpose} if purpose is not None else {},
        headers=files_api.auth(),
    )
    assert reason in problem(r, [field])
    assert stored(tmp_path) == []


async def test_an_upload_that_is_not_multipart_is_422(files_api: Api) -> None:
    r = await files_api.client.post(
        "/v1/files", content=png(6), headers={**files_api.auth(), "Content-Type": "image/png"}
    )
    assert "multipart/form-data" in problem(r, ["file"])


@pytest.mark.parametrize(
    ("net", "loc", "reason"),
    [
        ({"image_uri": data_uri(noisy_png(64))}, [0, "image_uri"], f"larger than {CAP} bytes"),
        ({"image_uri": "data:image/png;base64,!!!notbase64"}, [0, "image_uri"], "undecodable"),
        ({"image_uri": data_uri(b"\x89PNG\r\n\x1a\n broken")}, [0, "image_uri"], "undecodable"),
        ({"image_uri": data_uri(png(7), "image/gif")}, [0, "image_uri"], "media type"),
        ({"image_uri": "data:image/png," + "x" * 10}, [0, "image_uri"], "base64"),
        ({"image_uri": "file-" + "0" * 32}, [0, "image_uri"], "upload it with POST /v1/files"),
        ({"image_uri": "file:///etc/passwd"}, [0, "image_uri"], "must be a data: URI"),
        ({"image_uri": "https://example.com/a.png"}, [0, "image_uri"], "must be a data: URI"),
        ({"type": "sketch"}, [0, "type"], "unknown ControlNet type 'sketch'"),
        ({"type": "depth"}, [0, "type"], "no depth ControlNet for sd15 models"),
        ({"start_percent": 0.5, "end_percent": 0.5}, [0], "start_percent must be below"),
    ],
    ids=[
        "oversized",
        "bad-base64",
        "undecodable",
        "gif",
        "not-base64",
        "unknown-file",
        "file-uri",
        "https",
        "unknown-type",
        "family-mismatch",
        "empty-window",
    ],
)
async def test_a_bad_controlnet_is_422_naming_the_field_and_nothing_is_published(
    files_api: Api, tmp_path: Path, net: dict[str, Any], loc: list[Any], reason: str
) -> None:
    full = {"type": "canny", "image_uri": data_uri(png(8)), **net}
    r = await files_api.client.post("/v1/generations", json=body(full), headers=files_api.auth())
    assert reason in problem(r, ["controlnets", *loc])
    assert files_api.publisher.records == []
    assert stored(tmp_path) == []  # a valid image of a refused request is not kept either


async def test_too_many_controlnets_for_the_plan_is_422(files_api: Api) -> None:
    free = await files_api.deps.accounts.create_key("u-free", Plan.FREE)
    nets = [{"type": "canny", "image_uri": data_uri(png(9))}] * 2
    r = await files_api.client.post(
        "/v1/generations", json=body(*nets), headers=files_api.auth(free)
    )
    assert "at most 1 ControlNets" in problem(r, ["controlnets"])
    assert files_api.publisher.records == []


async def test_every_problem_is_named_at_once(files_api: Api) -> None:
    nets = [{"type": "sketch", "image_uri": "file:///x.png"}]
    r = await files_api.client.post("/v1/generations", json=body(*nets), headers=files_api.auth())
    assert "unknown ControlNet type" in problem(r, ["controlnets", 0, "type"])
    assert "must be a data: URI" in problem(r, ["controlnets", 0, "image_uri"])


async def test_without_a_files_folder_control_images_are_refused(api: Api) -> None:
    r = await api.client.post(
        "/v1/generations",
        json={"prompt": "a", "controlnets": [{"type": "canny", "image_uri": data_uri(png(1))}]},
        headers=api.auth(),
    )
    assert "no files folder" in problem(r, ["controlnets", 0, "image_uri"])
    assert api.publisher.records == []
