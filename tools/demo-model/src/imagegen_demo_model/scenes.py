"""Procedural scenes of colored shapes, their plain-English captions, and the hold-out split.

A scene is one or two objects on a flat background. Each object has a color, a shape, a size and
a position; a caption names some or all of them. Everything is deterministic from a seed: the
same seed gives the same scenes, captions and pixels.

The caption grammar (``parse_caption`` reads it back)::

    caption    := objects [background]
    objects    := object | object " and " object
    object     := ("a" | "an") [size] [color] shape [position]
    position   := "on the left" | "on the right" | "at the top" | "at the bottom" | "in the center"
    background := " on a" color "background" | "," color "background"

Hold-out: one (color, shape, position) triple in five is never drawn in training, chosen so that
every pair of those attributes is still seen; the evaluation uses only captions that contain a
held-out triple, so it measures new combinations, not memory.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

# Named colors, far apart in RGB so the checker can classify pixels by the nearest one.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 145, 30),
    "yellow": (240, 225, 40),
    "green": (40, 165, 60),
    "cyan": (40, 205, 215),
    "blue": (40, 75, 215),
    "purple": (135, 55, 185),
    "pink": (245, 140, 195),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "ring")
# Anchor of each position, as fractions of the image side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Radius of the shape's circumscribed circle, as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.14, "large": 0.21}
# Two objects always sit at opposite anchors, so they never overlap.
PAIRS = (("left", "right"), ("top", "bottom"))

# Words any caption may use; the tokenizer is built to cover them all.
CAPTION_WORDS = sorted(
    {*COLORS, *SHAPES, *SIZES, "a", "an", "and", "on", "the", "at", "in", "background", ","}
    | {w for phrase in POSITION_PHRASES.values() for w in phrase.split()}
)


@dataclass(frozen=True)
class SceneObject:
    color: str  # a key of COLORS
    shape: str  # one of SHAPES
    size: str  # a key of SIZES
    position: str  # a key of POSITIONS


@dataclass(frozen=True)
class Scene:
    background: str  # a key of COLORS, never the color of an object
    objects: tuple[SceneObject, ...]  # one or two, with distinct colors and opposite positions
    jitter: tuple[tuple[int, int], ...]  # pixel offset of each object from its anchor
    rotation: tuple[float, ...]  # small rotation of each object, in degrees


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object; ``None`` means the caption leaves it open."""

    shape: str | None
    color: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption says about a scene (see ``parse_caption``)."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None


# --- hold-out -------------------------------------------------------------------------------


def is_held_out(color: str, shape: str, position: str) -> bool:
    """True for the (color, shape, position) triples never drawn in training.

    A Latin-square rule: for each (color, shape) pair exactly one position is held out, and the
    held-out position moves with both indices, so every (color, position) and (shape, position)
    pair stays in training with other partners.
    """
    c = list(COLORS).index(color)
    s = SHAPES.index(shape)
    p = list(POSITIONS).index(position)
    return (c + 2 * s) % len(POSITIONS) == p


def held_out_triples() -> list[tuple[str, str, str]]:
    return [(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS if is_held_out(c, s, p)]


# --- sampling -------------------------------------------------------------------------------


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _pick_object(
    rng: random.Random, position: str, used_colors: set[str], split: str
) -> SceneObject:
    """An object at ``position`` whose triple belongs to ``split`` ("train", "heldout", "any")."""
    while True:
        color = rng.choice([c for c in COLORS if c not in used_colors])
        shape = rng.choice(SHAPES)
        held = is_held_out(color, shape, position)
        if split == "any" or (split == "heldout") == held:
            return SceneObject(color, shape, rng.choice(list(SIZES)), position)


def sample_scene(rng: random.Random, split: str = "train", n_objects: int | None = None) -> Scene:
    """A random scene. ``split="train"`` never draws a held-out triple; ``"heldout"`` makes the
    first object a held-out triple (the second is any triple); ``"any"`` ignores the split."""
    n = n_objects if n_objects is not None else rng.choice((1, 2))
    if n == 1:
        positions: tuple[str, ...] = (rng.choice(list(POSITIONS)),)
    else:
        pair = rng.choice(PAIRS)
        positions = pair if rng.random() < 0.5 else (pair[1], pair[0])
    objects: list[SceneObject] = []
    used: set[str] = set()
    for i, position in enumerate(positions):
        object_split = (
            "train" if split == "train" else ("heldout" if split == "heldout" and i == 0 else "any")
        )
        obj = _pick_object(rng, position, used, object_split)
        objects.append(obj)
        used.add(obj.color)
    background = rng.choice([c for c in COLORS if c not in used])
    jitter = tuple((rng.randint(-2, 2), rng.randint(-2, 2)) for _ in objects)
    rotation = tuple(rng.uniform(-8.0, 8.0) for _ in objects)
    return Scene(background, tuple(objects), jitter, rotation)


# --- captions -------------------------------------------------------------------------------


def object_phrase(spec: ObjectSpec) -> str:
    words = [w for w in (spec.size, spec.color, spec.shape or "shape") if w]
    phrase = f"{_article(words[0])} {' '.join(words)}"
    if spec.position:
        phrase += f" {POSITION_PHRASES[spec.position]}"
    return phrase


def format_caption(spec: CaptionSpec, background_style: str = "on") -> str:
    """Plain English for ``spec``; ``background_style`` is "on" (" on a blue background") or
    "comma" (", blue background")."""
    text = " and ".join(object_phrase(o) for o in spec.objects)
    if spec.background:
        if background_style == "comma":
            text += f", {spec.background} background"
        else:
            text += f" on {_article(spec.background)} {spec.background} background"
    return text


def full_spec(scene: Scene) -> CaptionSpec:
    objects = tuple(ObjectSpec(o.shape, o.color, o.size, o.position) for o in scene.objects)
    return CaptionSpec(objects, scene.background)


def describe(scene: Scene, rng: random.Random | None = None) -> str:
    """A caption that is true of ``scene``. Without ``rng`` it names everything; with one it
    leaves some attributes out (as people do), which teaches the model what is optional."""
    if rng is None:
        return format_caption(full_spec(scene))
    two = len(scene.objects) == 2
    drop_position = rng.random() < (0.1 if two else 0.3)
    objects = tuple(
        ObjectSpec(
            shape=o.shape,
            color=None if rng.random() < 0.05 else o.color,
            size=None if rng.random() < 0.5 else o.size,
            position=None if drop_position else o.position,
        )
        for o in scene.objects
    )
    background = None if rng.random() < 0.15 else scene.background
    style = "comma" if rng.random() < 0.4 else "on"
    return format_caption(CaptionSpec(objects, background), style)


# --- rendering ------------------------------------------------------------------------------


def _star(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = math.radians(rot - 90 + 36 * k)
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    offset = -90 if n == 3 else -45  # triangle points up, square sits flat
    return [
        (
            cx + r * math.cos(math.radians(rot + offset + 360 * k / n)),
            cy + r * math.sin(math.radians(rot + offset + 360 * k / n)),
        )
        for k in range(n)
    ]


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image, with hard edges (no anti-aliasing) so colors stay pure."""
    image = Image.new("RGB", (size, size), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj, (dx, dy), rot in zip(scene.objects, scene.jitter, scene.rotation, strict=True):
        ax, ay = POSITIONS[obj.position]
        cx, cy = ax * size + dx * size / 64, ay * size + dy * size / 64
        r = SIZES[obj.size] * size
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "ring":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
            h = r * 0.5
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=COLORS[scene.background])
        elif obj.shape == "square":
            draw.polygon(_polygon(cx, cy, r * 0.8 * math.sqrt(2), 4, rot), fill=fill)
        elif obj.shape == "triangle":
            # Drawn 0.2 r low: an upright triangle's box sits above its centroid, and this
            # centres the box on the anchor while the centroid stays well inside its region.
            draw.polygon(_polygon(cx, cy + r * 0.2, r * 1.1, 3, rot), fill=fill)
        elif obj.shape == "star":
            draw.polygon(_star(cx, cy, r * 1.15, rot), fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image


def render_array(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    return np.asarray(render(scene, size), dtype=np.uint8)


# --- parsing --------------------------------------------------------------------------------

_BACKGROUND = re.compile(r"(?:,\s*|\s+on\s+an?\s+)(\w+)\s+background\s*$")
_POSITION_WORDS = {
    "left": "left",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
    "center": "center",
    "middle": "center",
}
_SIZE_WORDS = {"small": "small", "little": "small", "large": "large", "big": "large"}


def parse_caption(caption: str) -> CaptionSpec:
    """Read a caption back into what it says. Unknown words are ignored; a part without a shape
    word is not an object. Raises ValueError when no object is named at all."""
    text = caption.strip().lower().rstrip(".")
    background = None
    match = _BACKGROUND.search(text)
    if match and match.group(1) in COLORS:
        background = match.group(1)
        text = text[: match.start()]
    objects = []
    for part in re.split(r"\s+and\s+", text):
        words = re.findall(r"[a-z]+", part)
        shape = next((w for w in words if w in SHAPES), None)
        if shape is None and "shape" not in words:
            continue
        objects.append(
            ObjectSpec(
                shape=shape,
                color=next((w for w in words if w in COLORS), None),
                size=next((_SIZE_WORDS[w] for w in words if w in _SIZE_WORDS), None),
                position=next((_POSITION_WORDS[w] for w in words if w in _POSITION_WORDS), None),
            )
        )
    if not objects:
        raise ValueError(f"caption names no shape: {caption!r}")
    return CaptionSpec(tuple(objects), background)


def keywords(scene: Scene, rng: random.Random) -> str:
    """A bare keyword caption that is true of ``scene``: an object's color ("red"), its color
    and shape ("red star"), or the background ("blue background"). Training on a few of these
    gives a negative prompt like "red" something to push away from."""
    obj = rng.choice(scene.objects)
    roll = rng.random()
    if roll < 0.5:
        return obj.color
    if roll < 0.75:
        return f"{obj.color} {obj.shape}"
    return f"{scene.background} background"
