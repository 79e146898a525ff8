"""Builds the model catalog from the registered models (``models/*/model.json``).

A manifest's ``kind`` says what it registers: a base model (``base``, the default), a LoRA
(``lora``) or a ControlNet (``controlnet``, with its ``controlnet_type``); adapters name the
``family`` they apply to. Optional keys fall back to defaults: ``min_size`` and ``max_size`` (the
family's range, widened to hold the model's own ``default_size``), ``samplers`` (the proven
default set), ``tier`` (2), ``default_steps`` (25), ``default_guidance`` (5.0) and ``created``
(the manifest's mtime).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..domain.validation import (
    DEFAULT_SAMPLERS,
    FAMILY_SIZE_RANGE,
    AdapterInfo,
    Catalog,
    ModelInfo,
)


def load_catalog(models_dir: Path) -> Catalog:
    models: dict[str, ModelInfo] = {}
    adapters: list[AdapterInfo] = []
    for manifest in sorted(models_dir.glob("*/model.json")):
        doc = json.loads(manifest.read_text())
        created = int(doc.get("created", manifest.stat().st_mtime))
        kind = doc.get("kind", "base")
        if kind in ("lora", "controlnet"):
            adapters.append(
                AdapterInfo(
                    id=doc["id"],
                    kind=kind,
                    family=doc["family"],
                    created=created,
                    controlnet_type=doc.get("controlnet_type"),
                )
            )
            continue
        lo, hi = FAMILY_SIZE_RANGE.get(doc["family"], (64, 1024))
        default_size = int(doc.get("default_size", lo))
        models[doc["id"]] = ModelInfo(
            id=doc["id"],
            family=doc["family"],
            min_size=int(doc.get("min_size", min(lo, default_size))),
            max_size=int(doc.get("max_size", max(hi, default_size))),
            default_size=default_size,
            samplers=frozenset(doc["samplers"]) if "samplers" in doc else DEFAULT_SAMPLERS,
            tier=int(doc.get("tier", 2)),
            default_steps=int(doc.get("default_steps", 25)),
            default_guidance=float(doc.get("default_guidance", 5.0)),
            created=created,
        )
    return Catalog(
        models=models,
        loras=frozenset(a.id for a in adapters if a.kind == "lora"),
        controlnets=frozenset(
            a.controlnet_type for a in adapters if a.kind == "controlnet" and a.controlnet_type
        ),
        adapters=tuple(adapters),
    )
