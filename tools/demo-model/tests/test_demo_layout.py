"""The demo model's fixed latent space (the layout map) and the training captions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from imagegen_demo_model import layout, scenes

pytestmark = pytest.mark.unit


def scene_with(*objects: scenes.SceneObject, background: str = "white") -> scenes.Scene:
    n = len(objects)
    return scenes.Scene(background, tuple(objects), ((0, 0),) * n, (0.0,) * n)


def test_one_object_is_written_where_the_caption_puts_it():
    scene = scene_with(scenes.SceneObject("red", "star", "large", "left"), background="blue")
    z = layout.encode(scene)
    assert z.shape == (layout.CHANNELS, 8, 8)
    assert z.dtype == np.float32
    # background everywhere, exactly the named color
    blue = np.asarray(scenes.COLORS["blue"]) / 127.5 - 1
    assert np.allclose(z[0:3], blue[:, None, None], atol=1e-6)
    presence = z[3]
    assert presence[:, :4].sum() > 10 * presence[:, 4:].sum()  # the left half, nearly all
    ys, xs = np.nonzero(presence > 0.99)
    assert xs.mean() < 3 and 2.5 < ys.mean() < 4.5
    # the star channel carries all of the shape, the color channels carry red x presence
    shape_sums = z[7:12].sum(axis=(1, 2))
    assert shape_sums.argmax() == scenes.SHAPES.index("star")
    assert np.isclose(shape_sums.sum(), presence.sum())
    red = np.asarray(scenes.COLORS["red"]) / 127.5 - 1
    assert np.allclose(z[4:7], red[:, None, None] * presence, atol=1e-6)
    assert (z[14][presence > 0] > 0).all()  # large


def test_offsets_point_at_the_object_centre_from_every_cell_it_reaches():
    scene = scenes.Scene(
        "black", (scenes.SceneObject("cyan", "ring", "small", "bottom"),), ((2, -1),), (5.0,)
    )
    z = layout.encode(scene)
    cx, cy = layout.object_centre(scene, 0)
    assert (cx, cy) == (34.0, 47.0)
    ys, xs = np.nonzero(z[3] > 0)
    p = z[3, ys, xs]
    est_x = (xs + 0.5) * 8 + z[12, ys, xs] / p * 16
    est_y = (ys + 0.5) * 8 + z[13, ys, xs] / p * 16
    assert np.allclose(est_x, cx, atol=1e-4) and np.allclose(est_y, cy, atol=1e-4)
    assert np.allclose(z[15, ys, xs] / p, 5.0 / 8.0)


def test_two_objects_add_up_and_meet_only_between_them():
    rng = random.Random(3)
    for _ in range(300):
        scene = scenes.sample_scene(rng, "any", 2)
        z = layout.encode(scene)
        assert np.allclose(z[7:12].sum(0), z[3], atol=1e-6)  # shape one-hots add to presence
        shared = np.argwhere(z[3] > 1.0 + 1e-6)  # both reaches: only in the middle band
        if scene.objects[0].position in ("left", "right"):
            assert all(3 <= x <= 4 for _, x in shared)
        else:
            assert all(3 <= y <= 4 for y, _ in shared)


def test_where_channels_are_the_same_in_every_scene():
    rng = random.Random(4)
    a, b = (layout.encode(scenes.sample_scene(rng)) for _ in range(2))
    assert np.array_equal(a[16:18], b[16:18])
    assert a[16, 0, 0] == -1 and a[16, 0, 7] == 1 and a[17, 7, 0] == 1


def test_preview_paints_the_object_over_the_background():
    scene = scene_with(scenes.SceneObject("yellow", "circle", "large", "center"))
    rgb = layout.preview_rgb(layout.encode(scene))
    yellow = np.asarray(scenes.COLORS["yellow"]) / 127.5 - 1
    white = np.asarray(scenes.COLORS["white"]) / 127.5 - 1
    assert np.allclose(rgb[:, 4, 4], yellow, atol=1e-6)
    assert np.allclose(rgb[:, 0, 0], white, atol=1e-6)


def test_the_workers_preview_from_model_json_paints_what_the_layout_preview_paints():
    # The gpu-worker never imports this package: it reads the colours from model.json.
    torch = pytest.importorskip("torch")
    from imagegen_demo_model import model
    from imagegen_gpu_worker.adapters import registry
    from imagegen_gpu_worker.adapters.diffusers_runner import preview_rgb

    assert registry.verify(model.DEFAULT_MODEL_DIR).preview == layout.PREVIEW
    rng = np.random.default_rng(0)
    scene = scene_with(
        scenes.SceneObject("red", "star", "small", "left"),
        scenes.SceneObject("blue", "ring", "large", "right"),
    )
    for lat in (layout.encode(scene), rng.standard_normal((18, 8, 8)).astype(np.float32)):
        painted = preview_rgb(torch.from_numpy(lat), layout.PREVIEW).numpy()
        assert np.array_equal(painted, layout.preview_rgb(lat))


def test_keyword_captions_are_true_of_their_scene():
    rng = random.Random(5)
    seen = set()
    for _ in range(400):
        scene = scenes.sample_scene(rng)
        words = scenes.keywords(scene, rng).split()
        colors = {o.color for o in scene.objects}
        if words[-1] == "background":
            assert words == [scene.background, "background"]
            seen.add("background")
        elif len(words) == 2:
            assert (words[0], words[1]) in {(o.color, o.shape) for o in scene.objects}
            seen.add("color shape")
        else:
            assert words[0] in colors
            seen.add("color")
    assert seen == {"background", "color shape", "color"}


def test_caption_head_targets_say_only_what_the_caption_says():
    train = pytest.importorskip("imagegen_demo_model.train")
    head = train.CaptionHead
    t = head.targets(
        [
            "a small red star on the left and a blue ring on the right, white background",
            "a green circle",  # no position: slots unknown
            "",
            "red",
        ]
    )
    slots, colors = head.SLOTS, head.COLORS
    left, right, top = (3 * slots.index(p) for p in ("left", "right", "top"))
    row = t[0].tolist()
    assert row[left : left + 3] == [colors.index("red"), scenes.SHAPES.index("star"), 0]
    assert row[right : right + 3] == [colors.index("blue"), scenes.SHAPES.index("ring"), -100]
    assert row[top : top + 2] == [len(colors), len(scenes.SHAPES)]  # nothing at the top
    assert row[-1] == colors.index("white")
    assert set(t[1].tolist()) == {-100} and set(t[2].tolist()) == {-100}
    assert set(t[3].tolist()) == {-100}


def test_caption_head_loss_falls_when_it_learns():
    torch = pytest.importorskip("torch")
    train = pytest.importorskip("imagegen_demo_model.train")
    torch.manual_seed(0)
    head = train.CaptionHead(8)
    captions = ["a red star on the left, white background", "a blue ring at the top"]
    targets = train.CaptionHead.targets(captions)
    features = torch.randn(2, 8)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = head.loss(features, targets).item()
    for _ in range(50):
        opt.zero_grad()
        loss = head.loss(features, targets)
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


def test_training_captions_mix_empty_keywords_and_descriptions():
    """One-object scenes: ~20 % empty captions (guidance's p(image)), ~5 % keywords; two-object
    scenes are never left without a caption (docs/adr/0208)."""
    train = pytest.importorskip("imagegen_demo_model.train")
    rng = random.Random(6)
    for n_objects, empty_range in ((1, (300, 500)), (2, (0, 0))):
        scene = scenes.sample_scene(random.Random(1), n_objects=n_objects)
        kinds = {"empty": 0, "keywords": 0, "caption": 0}
        for _ in range(2000):
            caption = train.training_caption(scene, rng)
            if not caption:
                kinds["empty"] += 1
            elif any(s in caption for s in scenes.SHAPES) and caption.startswith(("a ", "an ")):
                kinds["caption"] += 1
            else:
                kinds["keywords"] += 1
        assert empty_range[0] <= kinds["empty"] <= empty_range[1], (n_objects, kinds)
        assert 50 < kinds["keywords"] < 150, (n_objects, kinds)


def test_imperfect_maps_keep_what_the_map_says_and_only_perturb_it():
    """The decoder's training input: overshoot and drift, but the true shape stays the largest
    shape channel inside the object (bar rare noisy cells), the where-am-I channels are
    untouched, the input map is not modified, and the same generator gives the same maps."""
    torch = pytest.importorskip("torch")
    train = pytest.importorskip("imagegen_demo_model.train")
    rng = random.Random(3)
    items = [scenes.sample_scene(rng, "train", 1) for _ in range(64)]
    exact = torch.from_numpy(layout.encode_batch(items))
    before = exact.clone()
    first = train.imperfect_maps(exact, torch.Generator().manual_seed(0))
    again = train.imperfect_maps(exact, torch.Generator().manual_seed(0))
    assert torch.equal(exact, before) and torch.equal(first, again)
    assert torch.equal(first[:, 16:], exact[:, 16:])
    assert (first[:, :16] - exact[:, :16]).abs().amax() > 0.3  # really perturbed
    kept = cells = 0
    for i, scene in enumerate(items):
        true = layout.SHAPE_CHANNELS[scene.objects[0].shape]
        strong = exact[i, 3] > 0.5  # cells well inside the object's reach
        kept += int((first[i, 7:12].argmax(0)[strong] == true - 7).sum())
        cells += int(strong.sum())
    assert cells > 500 and kept >= 0.98 * cells  # per-cell noise may flip a rare cell
