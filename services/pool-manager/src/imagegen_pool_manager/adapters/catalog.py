"""The pool's model catalog, from the registered models (``models/*/model.json``).

A model's size is the sum of its ``components`` (bytes of each component folder's files, as the
registry wrote them), else of its files; its tier is the manifest's ``tier`` (1 pinned, 2 kept by
priority, 3 on demand; 3 when absent). Adapters (``kind`` lora or controlnet) are left out: the
pool loads base models.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..domain.policy import TIER_ON_DEMAND, ModelInfo


def load_models(models_dir: Path) -> dict[str, ModelInfo]:
    models = {}
    for manifest in sorted(models_dir.glob("*/model.json")):
        doc = json.loads(manifest.read_text())
        if doc.get("kind", "base") != "base":
            continue
        components = doc.get("components")
        if components:
            size = sum(int(v) for v in components.values())
        else:
            size = sum(p.stat().st_size for p in manifest.parent.rglob("*") if p.is_file())
        models[doc["id"]] = ModelInfo(
            model_id=doc["id"],
            family=doc["family"],
            size=float(size),
            tier=int(doc.get("tier", TIER_ON_DEMAND)),
        )
    return models
