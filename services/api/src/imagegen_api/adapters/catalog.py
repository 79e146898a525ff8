"""Builds the model catalog from the registered models (``models/*/model.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..domain.validation import DEFAULT_SAMPLERS, FAMILY_SIZE_RANGE, Catalog, ModelInfo


def load_catalog(models_dir: Path) -> Catalog:
    models = {}
    for manifest in sorted(models_dir.glob("*/model.json")):
        doc = json.loads(manifest.read_text())
        lo, hi = FAMILY_SIZE_RANGE.get(doc["family"], (64, 1024))
        models[doc["id"]] = ModelInfo(
            id=doc["id"],
            family=doc["family"],
            min_size=int(doc.get("min_size", lo)),
            max_size=int(doc.get("max_size", hi)),
            default_size=int(doc.get("default_size", lo)),
            # model.json may list the schedulers the model runs; else the proven default set.
            samplers=frozenset(doc["samplers"]) if "samplers" in doc else DEFAULT_SAMPLERS,
        )
    return Catalog(models=models)
