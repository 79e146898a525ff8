"""The pixel checker, judged on the scene generator's own renders."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from imagegen_demo_model import checker, scenes
from imagegen_demo_model.scenes import Scene, SceneObject

pytestmark = pytest.mark.unit


def scene(*objects: SceneObject, background: str = "blue") -> Scene:
    return Scene(background, objects, ((0, 0),) * len(objects), (0.0,) * len(objects))


def test_the_issue_examples_are_judged_true_on_their_renders():
    red_circle = scene(SceneObject("red", "circle", "large", "center"))
    assert checker.check("a red circle on a blue background", scenes.render(red_circle))
    triangle = scene(SceneObject("green", "triangle", "small", "left"), background="white")
    assert checker.check(
        "a small green triangle on the left, white background", scenes.render(triangle)
    )
    two = scene(
        SceneObject("yellow", "star", "large", "top"),
        SceneObject("purple", "square", "small", "bottom"),
        background="black",
    )
    caption = "a yellow star at the top and a purple square at the bottom on a black background"
    assert checker.check(caption, scenes.render(two))


def test_true_captions_pass_on_many_random_renders():
    rng = random.Random(11)
    for _ in range(150):
        s = scenes.sample_scene(rng, "any")
        verdict = checker.check(scenes.describe(s), scenes.render(s))
        assert verdict, (scenes.describe(s), verdict.explain())


@pytest.mark.parametrize("attr", ["color", "shape", "position", "size"])
def test_a_wrong_attribute_fails(attr):
    rng = random.Random(12)
    checked = 0
    for _ in range(60):
        s = scenes.sample_scene(rng, "any", n_objects=1)
        obj = s.objects[0]
        choices = {
            "color": [c for c in scenes.COLORS if c not in (obj.color, s.background)],
            "shape": [x for x in scenes.SHAPES if x != obj.shape],
            "position": [p for p in scenes.POSITIONS if p != obj.position],
            "size": [z for z in scenes.SIZES if z != obj.size],
        }[attr]
        wrong = replace(obj, **{attr: rng.choice(choices)})
        caption = scenes.format_caption(
            scenes.CaptionSpec(
                (scenes.ObjectSpec(wrong.shape, wrong.color, wrong.size, wrong.position),),
                s.background,
            )
        )
        verdict = checker.check(caption, scenes.render(s))
        assert not verdict, caption
        checked += 1
    assert checked == 60


def test_a_wrong_background_fails():
    s = scene(SceneObject("red", "circle", "large", "center"))
    assert not checker.check("a red circle on a green background", scenes.render(s))


def test_two_objects_need_two_matching_blobs():
    s = scene(
        SceneObject("red", "star", "large", "left"),
        SceneObject("yellow", "ring", "large", "right"),
        background="black",
    )
    image = scenes.render(s)
    assert checker.check("a red star on the left and a yellow ring on the right", image)
    assert not checker.check("a red star on the right and a yellow ring on the left", image)
    assert not checker.check("a red star on the left and a green ring on the right", image)


def test_features_classify_each_shape_on_renders():
    rng = random.Random(13)
    for shape in scenes.SHAPES:
        for size in scenes.SIZES:
            obj = SceneObject("orange", shape, size, rng.choice(list(scenes.POSITIONS)))
            _, blobs = checker.find_blobs(scenes.render(scene(obj, background="cyan")))
            assert [(b.shape, b.size, b.position) for b in blobs] == [(shape, size, obj.position)]


def test_blurred_edges_do_not_create_blobs():
    # A 1-px fringe of a third color (what a blurry decoder leaves between red and blue) is no blob.
    s = scene(SceneObject("red", "square", "large", "center"))
    pixels = np.array(scenes.render(s))
    edge = (pixels[:, :, 0] > 200) & (np.roll(pixels[:, :, 0], 1, axis=1) < 100)
    pixels[edge] = scenes.COLORS["purple"]
    _, blobs = checker.find_blobs(Image.fromarray(pixels))
    assert [b.color for b in blobs] == ["red"]


def test_checker_works_at_other_sizes():
    s = scene(SceneObject("white", "ring", "large", "top"), background="black")
    assert checker.check("a large white ring at the top, black background", scenes.render(s, 128))
