"""The procedural scene generator: vocabulary, determinism, captions, hold-out split."""

from __future__ import annotations

import random
from itertools import product

import numpy as np
import pytest

from imagegen_demo_model import build, evaluate, scenes
from imagegen_demo_model.scenes import CaptionSpec, ObjectSpec

pytestmark = pytest.mark.unit


def test_vocabulary_is_at_least_what_the_issue_asks():
    assert {"circle", "square", "triangle", "star", "ring"} <= set(scenes.SHAPES)
    assert len(scenes.COLORS) >= 8
    assert set(scenes.POSITIONS) == {"left", "right", "top", "bottom", "center"}
    assert set(scenes.SIZES) == {"small", "large"}


def pairs(seed: int, n: int) -> list[tuple[scenes.Scene, str]]:
    """``n`` (scene, caption) pairs drawn from one seeded generator, as training draws them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = scenes.sample_scene(rng)
        out.append((scene, scenes.describe(scene, rng)))
    return out


def test_same_seed_same_scenes_captions_and_pixels():
    a, b = pairs(7, 20), pairs(7, 20)
    assert [c for _, c in a] == [c for _, c in b]
    for (sa, _), (sb, _) in zip(a, b, strict=True):
        assert np.array_equal(scenes.render_array(sa), scenes.render_array(sb))
    assert [c for _, c in pairs(8, 20)] != [c for _, c in a]


def test_scenes_have_one_or_two_objects_with_distinct_colors():
    rng = random.Random(0)
    counts = {1: 0, 2: 0}
    for _ in range(300):
        scene = scenes.sample_scene(rng)
        counts[len(scene.objects)] += 1
        colors = [o.color for o in scene.objects] + [scene.background]
        assert len(set(colors)) == len(colors)
        if len(scene.objects) == 2:
            assert tuple(sorted(o.position for o in scene.objects)) in {
                tuple(sorted(p)) for p in scenes.PAIRS
            }
    assert counts[1] > 100 and counts[2] > 100


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        (
            "a red circle on a blue background",
            CaptionSpec((ObjectSpec("circle", "red"),), "blue"),
        ),
        (
            "a small green triangle on the left, white background",
            CaptionSpec((ObjectSpec("triangle", "green", "small", "left"),), "white"),
        ),
        (
            "a yellow star at the top and a purple square at the bottom on a black background",
            CaptionSpec(
                (
                    ObjectSpec("star", "yellow", None, "top"),
                    ObjectSpec("square", "purple", None, "bottom"),
                ),
                "black",
            ),
        ),
    ],
)
def test_the_issue_phrasings_parse(caption, expected):
    assert scenes.parse_caption(caption) == expected


def test_full_captions_round_trip_through_the_parser():
    rng = random.Random(3)
    for _ in range(200):
        scene = scenes.sample_scene(rng, "any")
        for style in ("on", "comma"):
            caption = scenes.format_caption(scenes.full_spec(scene), style)
            assert scenes.parse_caption(caption) == scenes.full_spec(scene)


def test_partial_captions_only_say_true_things():
    rng = random.Random(4)
    for _ in range(300):
        scene = scenes.sample_scene(rng)
        spec = scenes.parse_caption(scenes.describe(scene, rng))
        assert spec.background in (None, scene.background)
        for said, obj in zip(spec.objects, scene.objects, strict=True):
            assert said.shape == obj.shape
            for attr in ("color", "size", "position"):
                assert getattr(said, attr) in (None, getattr(obj, attr))


def test_caption_words_are_single_tokens_of_the_learned_bpe():
    merges = build.learn_merges(build.TOKENIZER_WORDS)
    merged = {a + b for a, b in merges}
    for word in build.TOKENIZER_WORDS:
        assert len(word) == 1 or word + "</w>" in merged


def test_hold_out_keeps_every_pair_of_attributes_in_training():
    held = set(scenes.held_out_triples())
    assert len(held) == len(scenes.COLORS) * len(scenes.SHAPES)  # one position per color+shape
    train = set(product(scenes.COLORS, scenes.SHAPES, scenes.POSITIONS)) - held
    assert {(c, s) for c, s, _ in train} == set(product(scenes.COLORS, scenes.SHAPES))
    assert {(c, p) for c, _, p in train} == set(product(scenes.COLORS, scenes.POSITIONS))
    assert {(s, p) for _, s, p in train} == set(product(scenes.SHAPES, scenes.POSITIONS))


def test_training_scenes_never_draw_a_held_out_object():
    rng = random.Random(0)
    for _ in range(2000):
        for o in scenes.sample_scene(rng, "train").objects:
            assert not scenes.is_held_out(o.color, o.shape, o.position)


def test_every_evaluation_caption_names_a_held_out_object():
    captions = evaluate.eval_captions()
    assert len(captions) == len(set(captions)) == 40
    for caption in captions:
        spec = scenes.parse_caption(caption)
        assert spec.background is not None
        assert all(o.color and o.position for o in spec.objects)
        assert any(scenes.is_held_out(o.color, o.shape, o.position) for o in spec.objects)
