"""/v1/models: the registered models, in the shape of OpenAI's Models API plus our fields.

``GET /v1/models`` answers ``{"object": "list", "data": [...]}``, so the official client's
``models.list()`` works; ``GET /v1/models/{id}`` answers one entry (OpenAI's ``retrieve``), or a
404 in OpenAI's error body. Each entry has OpenAI's ``id``, ``object`` ("model"), ``created``
and ``owned_by``, and ours:

- ``kind``: ``base``, ``lora`` or ``controlnet``; ``family`` (sd15, sdxl, sd3, flux) on every kind;
- base models: ``tier`` (1 pinned warm, 2 kept by priority, 3 loaded on demand),
  ``default_size``, ``min_size``, ``max_size``, ``default_steps``, ``default_guidance``,
  ``default_sampler`` and ``samplers`` (every sampler the model runs; others get a 422);
- ControlNets: ``controlnet_type``, the name a request gives in ``controlnets[].type``.

A request names a LoRA by its listed ``id`` and a ControlNet by its type. Listing needs an API
key, as OpenAI's does.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from imagegen_schemas.common import SCHEDULERS

from ...domain.validation import AdapterInfo, Catalog, ModelInfo
from .deps import CallerDep, DepsDep
from .errors import openai_error

router = APIRouter(prefix="/v1/models", tags=["models"])
OWNER = "imagegen"


def base_entry(info: ModelInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": OWNER,
        "kind": "base",
        "family": info.family,
        "tier": info.tier,
        "default_size": info.default_size,
        "min_size": info.min_size,
        "max_size": info.max_size,
        "default_steps": info.default_steps,
        "default_guidance": info.default_guidance,
        "default_sampler": info.default_sampler,
        "samplers": [s for s in SCHEDULERS if s in info.samplers],
    }


def adapter_entry(info: AdapterInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": OWNER,
        "kind": info.kind,
        "family": info.family,
    }
    if info.kind == "controlnet":
        entry["controlnet_type"] = info.controlnet_type
    return entry


def entries(catalog: Catalog) -> list[dict[str, Any]]:
    """Base models by id, then adapters by kind and id."""
    bases = [base_entry(catalog.models[m]) for m in sorted(catalog.models)]
    adapters = sorted(catalog.adapters, key=lambda a: (a.kind, a.id))
    return bases + [adapter_entry(a) for a in adapters]


@router.get("")
async def list_models(who: CallerDep, deps: DepsDep) -> dict[str, Any]:
    return {"object": "list", "data": entries(deps.catalog)}


@router.get("/{model_id}", response_model=None)
async def retrieve_model(
    model_id: str, who: CallerDep, deps: DepsDep
) -> dict[str, Any] | JSONResponse:
    for entry in entries(deps.catalog):
        if entry["id"] == model_id:
            return entry
    known = ", ".join(sorted(e["id"] for e in entries(deps.catalog))) or "none"
    return openai_error(
        404,
        f"The model {model_id!r} does not exist; available: {known}",
        "model",
        "model_not_found",
    )
