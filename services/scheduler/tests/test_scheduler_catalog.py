"""The scheduler's catalog from the manifests: base models, and LoRAs as adapters; a job naming
an adapter the catalog does not know is still scheduled, not lost in a KeyError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagegen_scheduler.adapters.catalog import load_catalog
from imagegen_scheduler.domain import AdapterKind, footprint_gb
from imagegen_scheduler.domain.facts import JobFacts, job_request
from imagegen_scheduler.domain.log import held_id
from imagegen_schemas import ControlNetSpec, GenerationParams, LoraSpec, Plan, Tier
from imagegen_schemas import jobs as ev

pytestmark = pytest.mark.unit


def register(models: Path, doc: dict[str, object], size: int = 1000) -> None:
    folder = models / str(doc["id"])
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(doc))
    (folder / "weights.bin").write_bytes(b"\0" * size)


def test_loras_are_adapters_and_other_kinds_are_left_out(tmp_path: Path) -> None:
    register(tmp_path, {"id": "tiny-sd15", "family": "sd15"})
    register(tmp_path, {"id": "ink", "kind": "lora", "family": "sd15"}, size=2_000_000)
    register(tmp_path, {"id": "sd15-canny", "kind": "controlnet", "family": "sd15"})
    catalog = load_catalog(tmp_path)
    assert set(catalog.models) == {"tiny-sd15"}
    ink = catalog.adapters["lora/ink"]
    assert (ink.kind, ink.family, ink.step_overhead) == (AdapterKind.LORA, "sd15", 0.0)
    assert ink.weights_gb == pytest.approx(0.002, rel=0.01)


def facts_for(
    loras: tuple[str, ...] = (), model: str = "tiny-sd15", controlnets: tuple[str, ...] = ()
) -> JobFacts:
    params = GenerationParams(
        prompt="p",
        model=model,
        width=64,
        height=64,
        steps=4,
        guidance_scale=5,
        seed=1,
        loras=tuple(LoraSpec(name=n) for n in loras),
        controlnets=tuple(ControlNetSpec(type=t, image_uri="file:x") for t in controlnets),
    )
    f = JobFacts()
    f.request = ev.GenerationRequested(
        job_id="j", user_id="u", plan=Plan.PRO, tier=Tier.FAST, params=params
    )
    return f


def test_a_job_with_a_known_lora_carries_it_and_an_unknown_one_is_left_out(
    tmp_path: Path,
) -> None:
    register(tmp_path, {"id": "tiny-sd15", "family": "sd15"})
    register(tmp_path, {"id": "ink", "kind": "lora", "family": "sd15"})
    catalog = load_catalog(tmp_path)
    known = job_request(facts_for(("ink",)), catalog, 0.0)
    assert known is not None and known.adapters == ("lora/ink",)
    unknown = job_request(facts_for(("ink", "registered-later")), catalog, 0.0)
    assert unknown is not None and unknown.adapters == ("lora/ink",)
    assert footprint_gb(unknown, catalog) > 0  # no KeyError on the way


def test_a_job_names_a_controlnet_by_type_and_gets_its_familys_registered_net(
    tmp_path: Path,
) -> None:
    """Issue 12: jobs named nets ``cn/<type>``, which the catalog did not know, so the scheduler
    neither counted a net's memory nor saw the workers that hold it warm. Now ``cn/canny`` on an
    sd15 model is the sd15 canny net the workers run (the first by id), counted at its size,
    under the id a worker's heartbeat gives it."""
    register(tmp_path, {"id": "tiny-sd15", "family": "sd15"})
    register(tmp_path, {"id": "tiny-sdxl", "family": "sdxl"})
    for net, family, size in (
        ("b-sd15-canny", "sd15", 3_000_000),
        ("a-sd15-canny", "sd15", 2_000_000),
        ("sdxl-canny", "sdxl", 5_000_000),
    ):
        doc = {"id": net, "kind": "controlnet", "family": family, "controlnet_type": "canny"}
        register(tmp_path, doc, size=size)
    catalog = load_catalog(tmp_path)
    assert catalog.controlnets == {
        ("sd15", "canny"): "cn/a-sd15-canny",
        ("sdxl", "canny"): "cn/sdxl-canny",
    }
    net = catalog.adapters["cn/a-sd15-canny"]
    assert (net.kind, net.family) == (AdapterKind.CONTROLNET, "sd15")
    assert net.weights_gb == pytest.approx(0.002, rel=0.01)
    sd15 = job_request(facts_for(controlnets=("canny",)), catalog, 0.0)
    sdxl = job_request(facts_for(model="tiny-sdxl", controlnets=("canny",)), catalog, 0.0)
    assert sd15 is not None and sd15.adapters == ("cn/a-sd15-canny",)
    assert sdxl is not None and sdxl.adapters == ("cn/sdxl-canny",)
    bare = job_request(facts_for(), catalog, 0.0)
    assert bare is not None
    assert footprint_gb(sd15, catalog) - footprint_gb(bare, catalog) == pytest.approx(
        0.002, rel=0.05
    )
    held = held_id("a-sd15-canny", "controlnet")  # as a heartbeat lists the loaded net
    assert held in sd15.adapters  # a worker holding the net is warm for the job
    unknown = job_request(facts_for(controlnets=("depth",)), catalog, 0.0)
    assert unknown is not None and unknown.adapters == ()  # not held back for it
