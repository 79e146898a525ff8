"""The CPU control image preprocessors (numpy + Pillow; ADR 0706): what each makes of a
drawing whose edges are known."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagegen_gpu_worker.adapters import control_preprocess as cp

pytestmark = pytest.mark.unit


def rectangle(size: int = 96, fill: Any = (200, 40, 40), ground: Any = "white") -> Image.Image:
    image = Image.new("RGB", (size, size), ground)
    ImageDraw.Draw(image).rectangle((24, 32, 71, 63), fill=fill)
    return image


def white(image: Image.Image) -> np.ndarray[Any, Any]:
    rgb = np.asarray(image)
    assert rgb.shape[2] == 3
    return rgb[..., 0] > 127


def boundary(size: int = 96, near: int = 1) -> np.ndarray[Any, Any]:
    """Pixels within ``near`` of the rectangle's outline (x 24..71, y 32..63)."""
    y, x = np.mgrid[0:size, 0:size]
    inside = (x >= 24 - near) & (x <= 71 + near) & (y >= 32 - near) & (y <= 63 + near)
    core = (x >= 24 + near) & (x <= 71 - near) & (y >= 32 + near) & (y <= 63 - near)
    return inside & ~core


def test_canny_finds_the_outline_and_nothing_else() -> None:
    edges = white(cp.prepare("canny", rectangle(), 96, 96))
    assert edges.sum() > 0.8 * 2 * (48 + 32)  # most of the perimeter
    assert not (edges & ~boundary(near=2)).any()  # no edge away from it
    # each side is found: a column of edges at both vertical sides, a row at both horizontal
    assert edges[40:56, 22:27].any(axis=1).all() and edges[40:56, 69:74].any(axis=1).all()
    assert edges[30:35, 30:66].any(axis=0).all() and edges[61:66, 30:66].any(axis=0).all()


def test_canny_of_a_flat_image_is_black_and_an_edge_map_passes_through() -> None:
    flat = Image.new("RGB", (64, 64), (120, 130, 140))
    assert not white(cp.prepare("canny", flat, 64, 64)).any()
    edge_map = cp.prepare("canny", rectangle(), 96, 96)
    assert cp.prepare("canny", edge_map, 96, 96).tobytes() == edge_map.tobytes()


def test_canny_hysteresis_keeps_weak_edges_joined_to_strong_ones() -> None:
    # a step of 30 grey levels is weak (gradient ~120 after Sobel) and 80 is strong; the weak
    # step is kept only where it touches the strong one
    grey = np.full((64, 64), 100.0)
    grey[:, 32:] = 130.0  # weak vertical step at x = 32
    grey[:32, 32:] = 180.0  # strong in the top half
    grey[:, :8] = 100.0
    edges = cp.canny_edges(grey, sigma=0)
    assert edges[:, 30:34].any(axis=1)[4:60].all()  # the whole vertical step, weak half too
    alone = np.full((64, 64), 100.0)
    alone[:, 32:] = 130.0  # the weak step with no strong edge anywhere
    assert not cp.canny_edges(alone, sigma=0).any()


def test_components_label_8_connected_pixels_together() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one component
    mask[5, 5] = mask[5, 4] = True  # another
    labels = cp.components(mask)
    assert labels[0, 0] == labels[1, 1] == labels[2, 2] == 0
    assert labels[5, 4] == labels[5, 5] == 5 * 6 + 4
    assert (labels[~mask] == -1).all()


def test_scribble_draws_the_lines_of_a_sketch_in_either_polarity() -> None:
    sketch = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(sketch).line((8, 8, 56, 56), fill="black", width=2)
    lines = white(cp.prepare("scribble", sketch, 64, 64))
    inverted = Image.eval(sketch, lambda v: 255 - v)
    assert (white(cp.prepare("scribble", inverted, 64, 64)) == lines).all()
    y, x = np.mgrid[0:64, 0:64]
    on_line = np.abs(x - y) <= 3
    assert lines[on_line].mean() > 0.5 and not lines[~on_line].any()


def test_lineart_is_soft_and_dark_where_the_image_is_flat() -> None:
    art = np.asarray(cp.prepare("lineart", rectangle(), 96, 96))[..., 0]
    assert art[~boundary(near=7)].max() == 0  # the blur reaches 6 px (3 sigma)
    assert art[boundary(near=1)].max() > 100
    assert len(np.unique(art)) > 10  # graded, not a binary map


def test_tile_blurs_but_keeps_the_colours() -> None:
    source = Image.effect_noise((64, 64), 80).convert("RGB")
    tiled = cp.prepare("tile", source, 64, 64)
    a, b = np.asarray(source, dtype=np.float64), np.asarray(tiled, dtype=np.float64)
    assert abs(a.mean() - b.mean()) < 3
    assert np.abs(np.diff(b, axis=1)).mean() < 0.5 * np.abs(np.diff(a, axis=1)).mean()


def test_other_types_get_the_image_as_sent_at_the_output_size() -> None:
    source = rectangle(48)
    depth = cp.prepare("depth", source, 48, 48)
    assert depth.tobytes() == source.tobytes()
    resized = cp.prepare("openpose", source, 96, 64)
    assert resized.size == (96, 64) and resized.mode == "RGB"


@pytest.mark.parametrize("kind", sorted(cp.PREPROCESSORS))
def test_every_preprocessor_is_deterministic_and_sized(kind: str) -> None:
    source = Image.effect_noise((80, 60), 60).convert("RGB")
    first, second = cp.prepare(kind, source, 64, 48), cp.prepare(kind, source, 64, 48)
    assert first.size == (64, 48) and first.mode == "RGB"
    assert first.tobytes() == second.tobytes()
