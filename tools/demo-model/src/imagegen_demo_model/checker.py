"""A pixel checker: does an image show what its caption says, where the caption says it?

The checker reads the caption with ``scenes.parse_caption`` and then looks only at pixels:

1. Color: every pixel takes the name of the nearest named color (RGB distance). The most common
   name is the background.
2. Blobs: 4-connected regions of one non-background color. A region counts only if it has at
   least ``MIN_AREA`` pixels and one "core" pixel whose 3x3 neighbourhood is all its color; this
   drops the thin fringes a blurry edge leaves between two colors.
3. Shape, from three rotation-invariant features of the blob, in this order:
   ring if enclosed non-blob pixels ("hole") exceed 8 % of its area; else star if its solidity
   (area / convex hull area) is below 0.72; else by radial fill, area / (pi r_max^2)
   with r_max the farthest pixel from the centroid: circle above 0.8, square above 0.52,
   triangle below.
4. Position: the nearest anchor (left, right, top, bottom, center) to the blob's centroid.
5. Size: small if r_max is under ``LARGE_RADIUS`` of the image side, else large.

An object in the caption is found when some blob of its color (any non-background color when
the caption names none) matches every attribute the caption names; two objects need two
different blobs. A named background must be the most common color. Nothing is said about blobs
the caption does not mention.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imagegen_demo_model.scenes import (
    COLORS,
    POSITIONS,
    CaptionSpec,
    ObjectSpec,
    parse_caption,
)

MIN_AREA = 12  # pixels at 64 px; scaled by (side / 64)^2 for other sizes
HOLE_RATIO = 0.08
STAR_SOLIDITY = 0.72
CIRCLE_RADIAL_FILL = 0.8
SQUARE_RADIAL_FILL = 0.52
LARGE_RADIUS = 0.2  # r_max / side; renders: small 0.146-0.177, large 0.226-0.258

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Blob:
    color: str  # nearest named color of its pixels
    area: int  # pixels
    centroid: tuple[float, float]  # (x, y) in pixels
    hole: float  # enclosed non-blob pixels / area
    solidity: float  # area / convex hull area
    radial_fill: float  # area / (pi r_max^2)
    r_max: float  # farthest pixel from the centroid, in pixels (pixel half-width included)
    shape: str  # classified shape
    position: str  # nearest anchor
    size: str  # "small" or "large"


@dataclass(frozen=True)
class ObjectVerdict:
    spec: ObjectSpec  # what the caption asked for
    blob: Blob | None  # the matching blob, or the closest candidate when none matched
    ok: bool
    reason: str  # "" when ok, else what was wrong


@dataclass(frozen=True)
class Verdict:
    caption: str
    objects: tuple[ObjectVerdict, ...]
    background: str  # the most common color
    background_ok: bool  # True when the caption names none
    blobs: tuple[Blob, ...]  # everything found, for debugging

    @property
    def ok(self) -> bool:
        return self.background_ok and all(o.ok for o in self.objects)

    def __bool__(self) -> bool:
        return self.ok

    def explain(self) -> str:
        if self.ok:
            return "ok"
        parts = [f"{o.spec}: {o.reason}" for o in self.objects if not o.ok]
        if not self.background_ok:
            parts.append(f"background is {self.background}")
        return "; ".join(parts)


def classify_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W) array of indexes into COLORS: each pixel's nearest named color."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = pixels[..., :3].astype(np.float32)
    distances = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as an (N, 2) array of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        out.append(np.array(pixels))
    return out


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (x, y) points (Andrew's monotone chain + shoelace)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    xs = np.array([p[0] for p in hull])
    ys = np.array([p[1] for p in hull])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def _hole_pixels(component: np.ndarray) -> int:
    """Non-blob pixels inside the blob's box that cannot reach the box's edge."""
    ys, xs = component[:, 0], component[:, 1]
    y0, x0 = ys.min(), xs.min()
    box = np.zeros((ys.max() - y0 + 3, xs.max() - x0 + 3), dtype=bool)  # 1 px margin
    box[ys - y0 + 1, xs - x0 + 1] = True
    outside = _components(~box)
    reached = next(c for c in outside if (c == 0).all(axis=1).any())  # holds the (0, 0) corner
    return int((~box).sum()) - len(reached)


def _shape(hole: float, solidity: float, radial_fill: float) -> str:
    if hole > HOLE_RATIO:
        return "ring"
    if solidity < STAR_SOLIDITY:
        return "star"
    if radial_fill > CIRCLE_RADIAL_FILL:
        return "circle"
    if radial_fill > SQUARE_RADIAL_FILL:
        return "square"
    return "triangle"


def find_blobs(image: Image.Image | np.ndarray) -> tuple[str, list[Blob]]:
    """The background color and every significant blob, largest first."""
    labels = classify_pixels(image)
    side = labels.shape[0]
    background = int(np.bincount(labels.ravel(), minlength=len(_NAMES)).argmax())
    min_area = max(3, round(MIN_AREA * (side / 64) ** 2))
    padded = np.pad(labels, 1, mode="edge")
    core = np.ones_like(labels, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            core &= padded[dy : dy + side, dx : dx + labels.shape[1]] == labels
    blobs = []
    for index, name in enumerate(_NAMES):
        if index == background:
            continue
        for comp in _components(labels == index):
            if len(comp) < min_area or not core[comp[:, 0], comp[:, 1]].any():
                continue
            blobs.append(_describe(comp, name, side))
    blobs.sort(key=lambda b: -b.area)
    return _NAMES[background], blobs


def _describe(comp: np.ndarray, color: str, side: int) -> Blob:
    area = len(comp)
    cy, cx = comp[:, 0].mean() + 0.5, comp[:, 1].mean() + 0.5
    corners = np.concatenate(
        [comp[:, ::-1] + np.array(offset) for offset in ((0, 0), (1, 0), (0, 1), (1, 1))]
    )
    solidity = area / max(_hull_area(corners), 1.0)
    r_max = float(np.sqrt(((comp + 0.5 - [cy, cx]) ** 2).sum(axis=1)).max()) + 0.5
    radial_fill = area / (math.pi * r_max**2)
    hole = _hole_pixels(comp) / area
    anchors = {name: (ax * side, ay * side) for name, (ax, ay) in POSITIONS.items()}
    position = min(anchors, key=lambda n: (anchors[n][0] - cx) ** 2 + (anchors[n][1] - cy) ** 2)
    return Blob(
        color=color,
        area=area,
        centroid=(float(cx), float(cy)),
        hole=hole,
        solidity=solidity,
        radial_fill=radial_fill,
        r_max=r_max,
        shape=_shape(hole, solidity, radial_fill),
        position=position,
        size="large" if r_max / side >= LARGE_RADIUS else "small",
    )


def _mismatch(spec: ObjectSpec, blob: Blob) -> str:
    wrong = [
        f"{attr} is {getattr(blob, attr)}"
        for attr in ("shape", "position", "size")
        if getattr(spec, attr) is not None and getattr(spec, attr) != getattr(blob, attr)
    ]
    return ", ".join(wrong)


def check_spec(spec: CaptionSpec, image: Image.Image | np.ndarray, caption: str = "") -> Verdict:
    background, blobs = find_blobs(image)
    used: set[int] = set()
    verdicts = []
    for obj in spec.objects:
        candidates = [
            (i, b)
            for i, b in enumerate(blobs)
            if i not in used and (obj.color is None or b.color == obj.color)
        ]
        match = next(((i, b) for i, b in candidates if not _mismatch(obj, b)), None)
        if match is not None:
            used.add(match[0])
            verdicts.append(ObjectVerdict(obj, match[1], True, ""))
        elif candidates:
            closest = candidates[0][1]
            verdicts.append(ObjectVerdict(obj, closest, False, _mismatch(obj, closest)))
        else:
            verdicts.append(ObjectVerdict(obj, None, False, f"no {obj.color or 'colored'} blob"))
    background_ok = spec.background is None or spec.background == background
    return Verdict(caption, tuple(verdicts), background, background_ok, tuple(blobs))


def check(caption: str, image: Image.Image | np.ndarray) -> Verdict:
    """Judge ``image`` against ``caption``; the verdict is truthy when everything matches."""
    return check_spec(parse_caption(caption), image, caption)
