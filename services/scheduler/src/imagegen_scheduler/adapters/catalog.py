"""The policy's model catalog, from the registered models (``models/*/model.json``).

Sizes come from the files themselves; load and step times from optional fields of model.json
(``load_s``, ``step_s``, ``activation_gb_per_mpix``), else small defaults fit for tiny models.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..domain import AdapterKind, AdapterSpec, ModelCatalog, ModelSpec


def load_catalog(models_dir: Path) -> ModelCatalog:
    """Base models by id; LoRAs (``"kind": "lora"``) as adapters ``lora/<id>``, the id a job's
    ``loras[].name`` gives (``facts.job_request``)."""
    models = {}
    adapters = {}
    for manifest in sorted(models_dir.glob("*/model.json")):
        doc = json.loads(manifest.read_text())
        size = sum(p.stat().st_size for p in manifest.parent.rglob("*") if p.is_file())
        if doc.get("kind", "base") == "lora":
            adapter_id = f"lora/{doc['id']}"
            adapters[adapter_id] = AdapterSpec(
                adapter_id,
                AdapterKind.LORA,
                doc["family"],
                float(doc.get("weights_gb", size / 1e9)),
                tuple(doc.get("load_s", (0.05, 0.2))),  # type: ignore[arg-type]
                0.0,
            )
            continue
        if doc.get("kind", "base") != "base":
            continue  # ControlNets are not placed by the scheduler yet
        models[doc["id"]] = ModelSpec(
            model_id=doc["id"],
            family=doc["family"],
            weights_gb=float(doc.get("weights_gb", size / 1e9)),
            load_s=tuple(doc.get("load_s", (0.2, 0.5))),  # type: ignore[arg-type]
            step_s=float(doc.get("step_s", 0.01)),
            activation_gb_per_mpix=float(doc.get("activation_gb_per_mpix", 0.05)),
        )
    return ModelCatalog(models=models, adapters=adapters)
