"""Checks a request against the model catalog and the caller's plan (pure).

Each problem is reported as ``(field path, reason)`` so the API can answer 422 naming the field.
Bounds that need no catalog (steps 1..150, guidance 0..30, images 1..4, prompt length) are
enforced by the request model itself; ``text_problem`` is the edge rule for every string a client
sends (ADR 0601).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from imagegen_schemas.common import SCHEDULERS

from .plans import PlanLimits

FAMILY_SIZE_RANGE: dict[str, tuple[int, int]] = {
    "sd15": (64, 1024),
    "sdxl": (512, 2048),
    "sd3": (512, 2048),
    "flux": (256, 2048),
}


# Samplers a model runs when its model.json lists none: every one the platform knows but
# dpmpp_2m_karras, which fails on the shipped demo model (IndexError inside diffusers'
# DPMSolverMultistepScheduler with karras sigmas on its schedule, at every step count tried).
DEFAULT_SAMPLERS: frozenset[str] = frozenset(SCHEDULERS) - {"dpmpp_2m_karras"}

# Control characters a free text field may hold; every other one is refused (a NUL cannot even be
# stored by PostgreSQL, and the rest are never part of a prompt).
TEXT_WHITESPACE = frozenset("\t\n\r")


def text_problem(value: str, *, multiline: bool = True) -> str | None:
    """Why ``value`` cannot be taken as text, else None.

    Refused: a lone surrogate (not Unicode: it cannot be encoded as UTF-8) and any control
    character (Unicode category Cc), except tab, newline and carriage return in free text
    (``multiline``). The reason names the first offending character and its position.
    """
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            return f"must be valid unicode: lone surrogate U+{ord(ch):04X} at position {i}"
        if unicodedata.category(ch) == "Cc" and not (multiline and ch in TEXT_WHITESPACE):
            return f"must not contain control characters: U+{ord(ch):04X} at position {i}"
    return None


@dataclass(frozen=True)
class ModelInfo:
    id: str  # model id clients name
    family: str  # sd15, sdxl, ...
    min_size: int  # smallest width/height, pixels
    max_size: int  # largest width/height, pixels
    default_size: int  # used when the client gives none
    samplers: frozenset[str] = DEFAULT_SAMPLERS  # the schedulers this model runs with
    tier: int = 2  # warm-pool tier: 1 pinned, 2 kept by priority, 3 loaded on demand
    default_steps: int = 25  # used when the client gives none
    default_guidance: float = 5.0  # used when the client gives none
    created: int = 0  # unix time the model was registered (OpenAI's ``created``)

    @property
    def default_sampler(self) -> str:
        """The sampler a request without one gets: ddim where the model runs it, else the
        first the model runs in the platform's order."""
        if "ddim" in self.samplers:
            return "ddim"
        return next((s for s in SCHEDULERS if s in self.samplers), "ddim")


@dataclass(frozen=True)
class AdapterInfo:
    """A registered LoRA or ControlNet: what ``GET /v1/models`` lists beside base models."""

    id: str  # the name a request gives (a LoRA's ``name``; a ControlNet is named by its type)
    kind: str  # "lora" or "controlnet"
    family: str  # the base family it applies to
    created: int = 0
    controlnet_type: str | None = None  # canny, depth, ... (ControlNets only)


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelInfo]
    loras: frozenset[str] = field(default_factory=frozenset)  # registered LoRA names
    controlnets: frozenset[str] = field(default_factory=frozenset)  # registered ControlNet types
    adapters: tuple[AdapterInfo, ...] = ()  # every registered LoRA and ControlNet, for listing


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
    elif info is not None and scheduler not in info.samplers:
        runs = ", ".join(s for s in SCHEDULERS if s in info.samplers)
        problems.append(
            (
                ("scheduler",),
                f"scheduler {scheduler!r} cannot run on model {model!r}; it runs: {runs}",
            )
        )
    if num_images > limits.max_images:
        problems.append((("num_images",), f"your plan allows at most {limits.max_images}"))
    if len(loras) > limits.max_loras:
        problems.append((("loras",), f"your plan allows at most {limits.max_loras} LoRAs"))
    lora_family = {a.id: a.family for a in catalog.adapters if a.kind == "lora"}
    for i, name in enumerate(loras):
        if name not in catalog.loras:
            problems.append((("loras", i, "name"), f"unknown LoRA {name!r}"))
        elif info is not None and lora_family.get(name, info.family) != info.family:
            problems.append(
                (
                    ("loras", i, "name"),
                    f"LoRA {name!r} is for {lora_family[name]} models; "
                    f"model {model!r} is {info.family}",
                )
            )
    if len(controlnets) > limits.max_controlnets:
        problems.append(
            (("controlnets",), f"your plan allows at most {limits.max_controlnets} ControlNets")
        )
    cn_families: dict[str, set[str]] = {}
    for a in catalog.adapters:
        if a.kind == "controlnet" and a.controlnet_type:
            cn_families.setdefault(a.controlnet_type, set()).add(a.family)
    for i, kind in enumerate(controlnets):
        if kind not in catalog.controlnets:
            problems.append((("controlnets", i, "type"), f"unknown ControlNet type {kind!r}"))
        elif info is not None and info.family not in cn_families.get(kind, {info.family}):
            problems.append(
                (
                    ("controlnets", i, "type"),
                    f"no {kind} ControlNet for {info.family} models (registered for: "
                    f"{', '.join(sorted(cn_families[kind]))})",
                )
            )
    return problems
