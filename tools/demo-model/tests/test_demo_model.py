"""The committed shapes demo model: offline load with sha256 checks, determinism, guidance.

These run the real (tiny) model on CPU; importing diffusers costs ~10 s, so the module loads
the pipeline once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import pytest

from imagegen_demo_model import checker, model

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
evaluate = pytest.importorskip("imagegen_demo_model.evaluate")

PROMPT = "a yellow star at the top and a purple square at the bottom on a black background"


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return model.load_pipeline()


def test_fresh_offline_process_verifies_every_sha256_and_generates_the_same_bytes(pipe):
    # A new interpreter with the hub switched off before anything imports huggingface_hub.
    script = (
        "import hashlib, io, json, torch\n"
        "torch.set_num_threads(2)\n"
        "from imagegen_demo_model import evaluate, model\n"
        "from imagegen_gpu_worker.adapters import registry\n"
        "entry = registry.verify(model.DEFAULT_MODEL_DIR)\n"
        "pipe = model.load_pipeline()\n"
        f"image = evaluate.generate(pipe, [{PROMPT!r}], 5.0, 25, 0)[0]\n"
        "buf = io.BytesIO(); image.save(buf, format='PNG')\n"
        "print(json.dumps({'files': len(entry.files), 'size': image.size,\n"
        "                  'png': hashlib.sha256(buf.getvalue()).hexdigest()}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["files"] >= 8 and result["size"] == [64, 64]
    here = evaluate.generate(pipe, [PROMPT], 5.0, 25, 0)[0]
    assert result["png"] == hashlib.sha256(png_bytes(here)).hexdigest()


def test_same_prompt_and_seed_give_identical_bytes(pipe):
    first = evaluate.generate(pipe, [PROMPT], 5.0, 25, 7)[0]
    second = evaluate.generate(pipe, [PROMPT], 5.0, 25, 7)[0]
    assert png_bytes(first) == png_bytes(second)


def test_different_seeds_give_different_images(pipe):
    images = [evaluate.generate(pipe, [PROMPT], 5.0, 25, seed)[0] for seed in (1, 2, 3)]
    assert len({png_bytes(im) for im in images}) == 3


def pass_count(pipe, captions, guidance):
    images = evaluate.generate(pipe, captions, guidance, 25, 0)
    return sum(bool(checker.check(c, im)) for c, im in zip(captions, images, strict=True))


def test_held_out_captions_mostly_pass_the_checker_at_guidance_5(pipe):
    captions = evaluate.eval_captions()  # 40 captions, each with a never-seen combination
    assert pass_count(pipe, captions, 5.0) >= 32


def test_guidance_1_scores_clearly_lower_than_guidance_5(pipe):
    # On 160 held-out captions: on any 40 the two differ by a few captions by chance.
    captions = evaluate.wide_captions(4)
    at_5 = evaluate.success_rate(pipe, captions, 5.0, 25, 0)["correct"]
    at_1 = evaluate.success_rate(pipe, captions, 1.0, 25, 0)["correct"]
    assert at_1 <= at_5 - 16, f"guidance 1: {at_1}/160, guidance 5: {at_5}/160"


def colors_drawn(images):
    found = [checker.find_blobs(im)[1] for im in images]
    return [{b.color for b in f} for f in found]


def test_a_negative_prompt_naming_a_color_removes_it(pipe):
    # The prompt leaves the circle's color open; over 24 seeds most come out yellow and many
    # orange (18 and 16 here). Either as the negative prompt removes that color (0 here) while
    # every image still has its circle, in another color.
    prompt = "a circle on the left, white background"
    plain = colors_drawn(evaluate.generate(pipe, [prompt] * 24, 5.0, 25, 0))

    def count(drawn, color):
        return sum(color in d for d in drawn)

    for color in ("yellow", "orange"):
        without = colors_drawn(evaluate.generate(pipe, [prompt] * 24, 5.0, 25, 0, negative=color))
        assert count(plain, color) >= 8, (color, plain)
        assert count(without, color) <= count(plain, color) / 4, (color, without)
        assert sum(bool(d) for d in without) >= 22


def test_the_decoder_renders_exact_layout_maps_of_held_out_scenes(pipe):
    # Trained on imperfect maps (what guided samples look like), the decoder draws exact maps
    # well but not perfectly: the committed one misses 5 of 60, small stars drawn rounded.
    assert evaluate.decoder_round_trip(pipe)["correct"] >= 54
