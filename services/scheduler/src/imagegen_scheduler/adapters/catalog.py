"""The policy's model catalog, from the registered models (``models/*/model.json``).

Sizes come from the files themselves; load and step times from optional fields of model.json
(``load_s``, ``step_s``), else small defaults fit for tiny models. A base model's memory figures
are the shared budget model's (``imagegen_runtime.budget``, ADR 0708), the ones the workers
admit jobs by: its weights are its device components' files (``components``, tokenizers and
schedulers left out; every file when the manifest has no ``components``), its activations per
megapixel the manifest's own ``activation_mb_per_mpix`` (or ``activation_gb_per_mpix``), else
the family's estimate scaled to its denoiser's size (0.05 GB for a family without figures).
"""

from __future__ import annotations

import json
from pathlib import Path

from imagegen_runtime import budget

from ..domain import AdapterKind, AdapterSpec, ModelCatalog, ModelSpec

MB_TO_GB = budget.MIB / budget.GB


def load_catalog(models_dir: Path) -> ModelCatalog:
    """Base models by id; LoRAs (``"kind": "lora"``) as adapters ``lora/<id>``, the id a job's
    ``loras[].name`` gives (``facts.job_request``); ControlNets as adapters ``cn/<id>``, found
    for a job by (family, ``controlnet_type``), the first by id as the worker picks them."""
    models = {}
    adapters = {}
    controlnets: dict[tuple[str, str], str] = {}
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
        if doc.get("kind") == "controlnet" and doc.get("controlnet_type"):
            adapter_id = f"cn/{doc['id']}"  # as a heartbeat lists it (``log.held_id``)
            components = doc.get("components") or {}
            adapters[adapter_id] = AdapterSpec(
                adapter_id,
                AdapterKind.CONTROLNET,
                doc["family"],
                float(
                    doc.get(
                        "weights_gb",
                        budget.weights_mb(components) * MB_TO_GB if components else size / 1e9,
                    )
                ),
                tuple(doc.get("load_s", (0.05, 0.3))),  # type: ignore[arg-type]
                float(doc.get("step_overhead", 0.2)),
            )
            controlnets.setdefault((doc["family"], doc["controlnet_type"]), adapter_id)
            continue
        if doc.get("kind", "base") != "base":
            continue
        components = doc.get("components") or {}
        weights_gb = budget.weights_mb(components) * MB_TO_GB if components else size / 1e9
        models[doc["id"]] = ModelSpec(
            model_id=doc["id"],
            family=doc["family"],
            weights_gb=float(doc.get("weights_gb", weights_gb)),
            load_s=tuple(doc.get("load_s", (0.2, 0.5))),  # type: ignore[arg-type]
            step_s=float(doc.get("step_s", 0.01)),
            activation_gb_per_mpix=_activation_gb_per_mpix(doc, components),
        )
    return ModelCatalog(models=models, adapters=adapters, controlnets=controlnets)


def _activation_gb_per_mpix(doc: dict[str, object], components: dict[str, int]) -> float:
    """GB of activations per megapixel and image: the manifest's own figure, else the budget
    model's estimate for the family and denoiser size."""
    own = doc.get("activation_mb_per_mpix")
    if isinstance(own, int | float):
        return float(own) * MB_TO_GB
    legacy = doc.get("activation_gb_per_mpix")
    if isinstance(legacy, int | float):
        return float(legacy)
    family = str(doc.get("family"))
    if family not in budget.FAMILIES:
        return 0.05
    denoiser = budget.denoiser_mb(components)
    per_mpix = budget.activation_mb_per_mpix(family, denoiser_mb=denoiser or None)
    return per_mpix * MB_TO_GB
