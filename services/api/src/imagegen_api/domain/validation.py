"""Checks a request against the model catalog and the caller's plan (pure).

Each problem is reported as ``(field path, reason)`` so the API can answer 422 naming the field.
Bounds that need no catalog (steps 1..150, guidance 0..30, images 1..4, prompt length) are
enforced by the request model itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imagegen_schemas.common import SCHEDULERS

from .plans import PlanLimits

FAMILY_SIZE_RANGE: dict[str, tuple[int, int]] = {
    "sd15": (64, 1024),
    "sdxl": (512, 2048),
    "sd3": (512, 2048),
    "flux": (256, 2048),
}


@dataclass(frozen=True)
class ModelInfo:
    id: str  # model id clients name
    family: str  # sd15, sdxl, ...
    min_size: int  # smallest width/height, pixels
    max_size: int  # largest width/height, pixels
    default_size: int  # used when the client gives none


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelInfo]
    loras: frozenset[str] = field(default_factory=frozenset)  # registered LoRA names
    controlnets: frozenset[str] = field(default_factory=frozenset)  # registered ControlNet types


Problem = tuple[tuple[str | int, ...], str]


def check_request(
    *,
    model: str,
    width: int,
    height: int,
    scheduler: str,
    num_images: int,
    loras: list[str],
    controlnets: list[str],
    catalog: Catalog,
    limits: PlanLimits,
) -> list[Problem]:
    """Every reason the request cannot be served, in field order; empty when it can."""
    problems: list[Problem] = []
    info = catalog.models.get(model)
    if info is None:
        known = ", ".join(sorted(catalog.models)) or "none"
        problems.append((("model",), f"unknown model {model!r}; known: {known}"))
    else:
        for name, value in (("width", width), ("height", height)):
            if value % 8:
                problems.append(((name,), f"must be a multiple of 8, got {value}"))
            elif not info.min_size <= value <= info.max_size:
                problems.append(
                    (
                        (name,),
                        f"must be within {info.min_size}..{info.max_size} for {model}, got {value}",
                    )
                )
    if scheduler not in SCHEDULERS:
        problems.append(
            (("scheduler",), f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}")
        )
    if num_images > limits.max_images:
        problems.append((("num_images",), f"your plan allows at most {limits.max_images}"))
    if len(loras) > limits.max_loras:
        problems.append((("loras",), f"your plan allows at most {limits.max_loras} LoRAs"))
    for i, name in enumerate(loras):
        if name not in catalog.loras:
            problems.append((("loras", i, "name"), f"unknown LoRA {name!r}"))
    if len(controlnets) > limits.max_controlnets:
        problems.append(
            (("controlnets",), f"your plan allows at most {limits.max_controlnets} ControlNets")
        )
    for i, kind in enumerate(controlnets):
        if kind not in catalog.controlnets:
            problems.append((("controlnets", i, "type"), f"unknown ControlNet type {kind!r}"))
    return problems
