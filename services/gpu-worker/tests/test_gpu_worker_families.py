"""Every model family on the worker: the tiny random-weight model of each (sd15, sdxl, sd3,
flux, built by the model-zoo tool into a temporary folder) runs through ``DiffusersRunner.run``,
every sampler name on every family (the sampler x family matrix of ``domain/samplers.py``),
with the manifests' new fields and the families the worker announces.

One runner for the module (the four tiny models load in ~0.1 s each once diffusers is
imported); every run is 64 px and a few steps (tens of ms).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from gpu_worker_testkit import first_heartbeat
from PIL import Image

from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner, encode_png
from imagegen_gpu_worker.adapters.memory import MemoryInfo
from imagegen_gpu_worker.domain import samplers
from imagegen_gpu_worker.domain.plan import RunPlan
from imagegen_gpu_worker.domain.samplers import EXCLUDED, SAMPLERS, UnsupportedSampler
from imagegen_gpu_worker.service_layer.heartbeat import heartbeat
from imagegen_schemas.common import SCHEDULERS

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.unit

MODELS = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}
TIERS = {"tiny-sd15": 2, "tiny-sdxl": 2, "tiny-sd3": 3, "tiny-flux": 3}
STEPS = 4  # the fewest every listed sampler takes (PNDM's warm-up needs 4)
DEMO_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "shapes-demo"


@pytest.fixture(scope="module")
def runner(zoo: Path) -> DiffusersRunner:
    torch.set_num_threads(2)
    runner = DiffusersRunner(zoo)
    for model_id in MODELS.values():
        runner.load(model_id)
    return runner


def plan(
    model_id: str,
    sampler: str,
    seed: int = 7,
    *,
    steps: int = STEPS,
    width: int = 64,
    height: int = 64,
    negative: str = "blurry",
    num_images: int = 1,
) -> RunPlan:
    return RunPlan(
        job_id="j",
        fencing_token=1,
        attempt=1,
        model_id=model_id,
        prompt="a red circle on a blue background",
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=4.0,
        scheduler=sampler,
        seed=seed,
        num_images=num_images,
        progress_every=1,
    )


def run(runner: DiffusersRunner, p: RunPlan, previews: list[str | None] | None = None) -> Any:
    def on_step(step: int, total: int, preview: str | None) -> None:
        if previews is not None:
            previews.append(preview)

    return runner.run(p, on_step, lambda: False)


def assert_png(data: bytes, width: int = 64, height: int = 64) -> None:
    image = Image.open(io.BytesIO(data))
    image.verify()  # a complete, valid PNG
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (width, height) and image.mode == "RGB"


# -- one job per family --------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_job_of_every_family_is_reproducible_from_its_seed(
    runner: DiffusersRunner, family: str
) -> None:
    model_id = MODELS[family]
    default = registry.read_manifest(runner.models_dir / model_id).samplers[0]
    previews: list[str | None] = []
    first = run(runner, plan(model_id, default, seed=7, num_images=2), previews)
    again = run(runner, plan(model_id, default, seed=7, num_images=2))
    other = run(runner, plan(model_id, default, seed=8, num_images=2))
    assert len(first.images_png) == 2 and first.steps_done == STEPS
    for png in first.images_png:
        assert_png(png)
    assert first.images_png == again.images_png
    assert first.images_png[0] != other.images_png[0]
    assert first.images_png[0] != first.images_png[1]  # two images of a batch differ
    # a preview at every step, whatever the latents' layout (Flux packs them)
    assert len(previews) == STEPS and all(previews)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_non_square_image_of_every_family(runner: DiffusersRunner, family: str) -> None:
    p = plan(MODELS[family], "euler", width=96, height=64, steps=2)
    assert_png(run(runner, p).images_png[0], width=96, height=64)


def test_flux_ignores_the_negative_prompt_and_the_others_use_it(runner: DiffusersRunner) -> None:
    for family, model_id in MODELS.items():
        with_negative = run(runner, plan(model_id, "euler", negative="blurry")).images_png
        without = run(runner, plan(model_id, "euler", negative="")).images_png
        assert (with_negative == without) == (family == "flux"), family


# -- the sampler x family matrix ---------------------------------------------------------------


def has_flow_schedule(sampler: Any) -> bool:
    """Whether a diffusers scheduler steps a flow-matching model as one: a FlowMatch* class, or
    a solver in flow mode whose sigmas (noise fractions) stay within [0, 1]."""
    if type(sampler).__name__.startswith("FlowMatch"):
        return True
    if not getattr(sampler.config, "use_flow_sigmas", False):
        return False
    sigmas = getattr(sampler, "sigmas", None)
    return sigmas is not None and float(sigmas.min()) >= 0.0 and float(sigmas.max()) <= 1.0


def test_the_table_decides_every_sampler_on_every_family() -> None:
    """Every sampler name is either listed for a family or excluded with a reason; nothing is
    left undecided, nothing both."""
    for family in MODELS:
        listed, excluded = set(SAMPLERS[family]), set(EXCLUDED.get(family, {}))
        assert not listed & excluded, family
        assert listed | excluded == set(SCHEDULERS), family
    assert set(SAMPLERS) == set(MODELS) == set(registry.FAMILIES)


MATRIX = [(family, name) for family in sorted(MODELS) for name in SCHEDULERS]


@pytest.mark.parametrize(("family", "sampler"), MATRIX)
def test_sampler_on_family(runner: DiffusersRunner, family: str, sampler: str) -> None:
    model_id = MODELS[family]
    if sampler in SAMPLERS[family]:
        # listed: a valid image, the same bytes from the same seed
        first = run(runner, plan(model_id, sampler)).images_png
        assert_png(first[0])
        assert run(runner, plan(model_id, sampler)).images_png == first
        used = runner.loaded[model_id].pipe.scheduler
        assert type(used).__name__ == SAMPLERS[family][sampler][0]
        if family in ("sd3", "flux"):
            assert has_flow_schedule(used), f"{sampler} does not step {family} as a flow model"
        return
    # not listed: the runner refuses it, and it fails the way the table says when forced
    with pytest.raises(UnsupportedSampler, match=sampler):
        run(runner, plan(model_id, sampler))
    (cls_name, overrides), reason = EXCLUDED[family][sampler]
    model = runner.loaded[model_id]
    import diffusers

    extra = dict(overrides)
    if extra.get("use_flow_sigmas"):
        extra["flow_shift"] = float(model.scheduler_config.get("shift", 1.0))
    forced = getattr(diffusers, cls_name).from_config(model.scheduler_config, **extra)

    def forced_run(global_seed: int) -> list[bytes]:
        model.pipe.scheduler = forced
        torch.manual_seed(global_seed)
        with torch.inference_mode():
            out = model.pipe(
                prompt="a red circle",
                width=64,
                height=64,
                num_inference_steps=STEPS,
                generator=torch.Generator("cpu").manual_seed(7),
            )
        return [encode_png(image) for image in out.images]

    if reason == "not_seeded":
        # the job's seed does not decide the image: the global RNG does
        assert forced_run(1) != forced_run(2)
    else:
        assert reason == "no_flow_schedule"
        try:
            forced_run(1)
        except Exception:
            return  # fails in the pipeline
        assert not has_flow_schedule(forced), f"{sampler} would run on {family}: list it"


def test_an_unknown_family_runs_nothing() -> None:
    assert samplers.supported("sd2") == ()
    with pytest.raises(UnsupportedSampler):
        samplers.sampler_for("sd2", "euler")


def test_the_demo_model_runs_exactly_the_samplers_its_manifest_lists() -> None:
    entry = registry.read_manifest(DEMO_MODEL_DIR)
    runner = DiffusersRunner(DEMO_MODEL_DIR.parent)
    for sampler in SAMPLERS["sd15"]:
        p = plan(entry.id, sampler, steps=5)
        if sampler in entry.samplers:
            assert_png(run(runner, p).images_png[0])
        else:
            # dpmpp_2m_karras on its zero-terminal-SNR schedule, from 5 steps on (25 included)
            with pytest.raises(IndexError):
                run(runner, p)
    assert set(entry.samplers) == set(SAMPLERS["sd15"]) - {"dpmpp_2m_karras"}


# -- manifests and capabilities ----------------------------------------------------------------


@pytest.mark.parametrize("model_id", sorted(TIERS))
def test_the_zoo_manifests(zoo: Path, model_id: str) -> None:
    folder = zoo / model_id
    entry = registry.verify(folder)
    raw = json.loads((folder / registry.MANIFEST).read_text())
    family = entry.family
    assert MODELS[family] == model_id and raw["pipeline"] == registry.FAMILIES[family]
    assert raw["kind"] == "base" and raw["tier"] == TIERS[model_id]
    assert raw["created"] == 1764547200 and raw["default_size"] == 64
    assert raw["samplers"] == sorted(SAMPLERS[family]) and entry.samplers == tuple(raw["samplers"])
    # components: the bytes of each component folder's files
    expected: dict[str, int] = {}
    for name in raw["files"]:
        if "/" in name:
            part = name.split("/", 1)[0]
            expected[part] = expected.get(part, 0) + (folder / name).stat().st_size
    assert raw["components"] == expected and entry.components == expected
    assert {"vae", "scheduler", "text_encoder", "tokenizer"} <= expected.keys()
    assert ("unet" in expected) == (family in ("sd15", "sdxl"))
    assert sum(expected.values()) < 3 * 2**20  # a few MB at most


def test_the_committed_demo_manifest_has_the_new_fields() -> None:
    raw = json.loads((DEMO_MODEL_DIR / registry.MANIFEST).read_text())
    assert (raw["kind"], raw["tier"], raw["created"]) == ("base", 1, 1764547200)
    assert raw["components"]["unet"] > 0 and set(raw["components"]) == {
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    }


def test_the_worker_announces_the_families_of_its_registered_models(
    zoo: Path, tmp_path: Path
) -> None:
    assert registry.families(zoo) == ("flux", "sd15", "sd3", "sdxl")
    demo_only = tmp_path / "demo"
    (demo_only / "shapes-demo").mkdir(parents=True)
    shutil.copy(DEMO_MODEL_DIR / registry.MANIFEST, demo_only / "shapes-demo")
    assert registry.families(demo_only) == ("sd15",)
    # unreadable manifests, unknown families and non-base kinds announce nothing
    for name, text in {
        "broken": "{not json",
        "odd": json.dumps(
            {
                "id": "odd",
                "family": "sd2",
                "pipeline": "X",
                "default_size": 64,
                "default_steps": 1,
                "default_guidance": 1.0,
                "files": {},
            }
        ),
        "lora": json.dumps(
            {
                "id": "lora",
                "family": "sdxl",
                "pipeline": "X",
                "kind": "lora",
                "default_size": 64,
                "default_steps": 1,
                "default_guidance": 1.0,
                "files": {},
            }
        ),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / registry.MANIFEST).write_text(text)
    (tmp_path / "empty").mkdir()
    assert registry.families(tmp_path) == ()
    beat = heartbeat("w1", MemoryInfo(1, 1, "cpu"), 2.0, capabilities=registry.families(zoo))
    assert beat.capabilities == ("flux", "sd15", "sd3", "sdxl")


def test_bootstrap_announces_the_registered_families(zoo: Path, tmp_path: Path) -> None:
    from imagegen_gpu_worker.bootstrap import bootstrap
    from imagegen_gpu_worker.config import GpuWorkerSettings
    from imagegen_runtime.publishing import InMemoryPublisher

    publisher = InMemoryPublisher()
    settings = GpuWorkerSettings(
        kafka_bootstrap="127.0.0.1:1", blob_dir=tmp_path / "blobs", models_dir=zoo
    )
    app = bootstrap(settings, publisher=publisher)  # type: ignore[arg-type]
    hb = first_heartbeat(app, publisher)
    assert hb.capabilities == ("flux", "sd15", "sd3", "sdxl")
