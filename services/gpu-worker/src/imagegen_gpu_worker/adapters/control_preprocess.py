"""CPU preprocessors that turn a client's control image into a ControlNet's input (ADR 0706).

numpy and Pillow only (no OpenCV): every function takes and returns an RGB ``PIL.Image`` of the
output size and is deterministic (the same image gives the same bytes).

- ``canny``: Canny edges, white on black: grey levels (ITU-R 601 luma), a Gaussian blur
  (sigma 1), 3x3 Sobel gradients (L2 magnitude, 0..255 grey scale), non-maximum suppression
  along the gradient's direction rounded to 0/45/90/135 degrees, then hysteresis with the usual
  ControlNet thresholds (low 100, high 200): a weak edge pixel is kept when its 8-connected
  component of weak pixels holds a strong one. An image that is already an edge map (every
  channel of every pixel 0 or 255, mostly black) is taken as it is.
- ``lineart``: soft line art, white on black: how much darker each pixel is than its
  neighbourhood (a Gaussian blur, sigma 2), times 4, clipped to 0..255.
- ``scribble``: the same dark lines, thresholded (8 grey levels darker than the neighbourhood)
  and thickened by one pixel (3x3 dilation), white on black. A drawing on a dark background
  (median luma below 128: already white strokes on black, the map a scribble ControlNet reads)
  is inverted first, so either polarity works.
- ``tile``: the image blurred by resampling: shrunk to 1/4 of its side (box filter, at least
  8 px) and enlarged back (bicubic).
- any other type (``depth``, ``openpose``, ...): the image as the client sent it (a ready
  control map).

Every image is first converted to RGB and resized (stretched, Lanczos) to the output size, so
the edges are found at the resolution the ControlNet sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

CANNY_LOW, CANNY_HIGH = 100.0, 200.0  # hysteresis thresholds on the 0..255-scale gradient
CANNY_SIGMA = 1.0
LINE_SIGMA = 2.0
LINEART_GAIN = 4.0
SCRIBBLE_THRESHOLD = 8.0  # grey levels darker than the neighbourhood
TILE_FACTOR = 4

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


def luma(image: Image.Image) -> FloatArray:
    """Grey levels 0..255 (float64) of an RGB image."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _convolve1d(a: FloatArray, kernel: FloatArray, axis: int) -> FloatArray:
    """``a`` convolved with a symmetric or odd ``kernel`` along ``axis`` (edges reflected)."""
    r = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    padded = np.pad(a, pad, mode="reflect") if min(a.shape) > r else np.pad(a, pad, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=axis)
    out: FloatArray = windows @ kernel[::-1]
    return out


def gaussian(a: FloatArray, sigma: float) -> FloatArray:
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    return _convolve1d(_convolve1d(a, k, 0), k, 1)


def sobel(a: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(d/dx, d/dy) with 3x3 Sobel kernels."""
    smooth = np.array([1.0, 2.0, 1.0])
    diff = np.array([1.0, 0.0, -1.0])  # convolution flips it: right minus left
    gx = _convolve1d(_convolve1d(a, smooth, 0), diff, 1)
    gy = _convolve1d(_convolve1d(a, diff, 0), smooth, 1)
    return gx, gy


def _shift(a: np.ndarray[Any, Any], dy: int, dx: int, fill: Any) -> np.ndarray[Any, Any]:
    """``a`` moved so that ``out[y, x] == a[y + dy, x + dx]`` (``fill`` outside)."""
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[yd, xd] = a[ys, xs]
    return out


NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def non_maximum(magnitude: FloatArray, gx: FloatArray, gy: FloatArray) -> BoolArray:
    """Pixels whose magnitude is a maximum along their gradient direction."""
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (np.round(angle / 45.0).astype(np.int64)) % 4  # 0: 0, 1: 45, 2: 90, 3: 135 degrees
    # image rows grow downwards: a gradient at +45 degrees (dy > 0) points to (row+1, col+1)
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = np.zeros(magnitude.shape, dtype=bool)
    for s, (dy, dx) in steps.items():
        ahead = _shift(magnitude, dy, dx, 0.0)
        behind = _shift(magnitude, -dy, -dx, 0.0)
        keep |= (sector == s) & (magnitude >= ahead) & (magnitude > behind)
    return keep & (magnitude > 0)


def components(mask: BoolArray) -> np.ndarray[Any, np.dtype[np.int64]]:
    """8-connected component labels of ``mask`` (a pixel's label: the smallest flat index in its
    component; -1 outside): hooking the larger root under the smaller along every pair of
    neighbouring pixels, then pointer jumping, until no pair joins two roots (a few rounds)."""
    h, w = mask.shape
    index = np.arange(h * w, dtype=np.int64).reshape(h, w)
    pairs_p, pairs_q = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each neighbouring pair once
        both = mask & _shift(mask, dy, dx, False)
        pairs_p.append(index[both])
        pairs_q.append(_shift(index, dy, dx, -1)[both])
    p, q = np.concatenate(pairs_p), np.concatenate(pairs_q)
    parent = index.ravel().copy()
    while True:
        rp, rq = parent[p], parent[q]
        apart = rp != rq
        if not apart.any():
            break
        lo, hi = np.minimum(rp[apart], rq[apart]), np.maximum(rp[apart], rq[apart])
        np.minimum.at(parent, hi, lo)  # a label always names a pixel with no larger label
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return np.where(mask, parent.reshape(h, w), -1)


def canny_edges(
    grey: FloatArray, low: float = CANNY_LOW, high: float = CANNY_HIGH, sigma: float = CANNY_SIGMA
) -> BoolArray:
    """Canny edges of a 0..255 grey image (see the module docstring)."""
    smoothed = gaussian(grey, sigma) if sigma > 0 else grey
    gx, gy = sobel(smoothed)
    magnitude = np.hypot(gx, gy)
    thin = non_maximum(magnitude, gx, gy)
    weak = thin & (magnitude >= low)
    strong = thin & (magnitude >= high)
    if not strong.any():
        return strong
    labels = components(weak)
    keep = np.unique(labels[strong])
    edges: BoolArray = weak & np.isin(labels, keep)
    return edges


def _white_on_black(mask: BoolArray) -> Image.Image:
    grey = np.where(mask, 255, 0).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _is_edge_map(image: Image.Image) -> bool:
    rgb = np.asarray(image.convert("RGB"))
    return bool(np.isin(rgb, (0, 255)).all() and np.median(rgb) == 0)


def canny(image: Image.Image) -> Image.Image:
    if _is_edge_map(image):
        return image.convert("RGB")
    return _white_on_black(canny_edges(luma(image)))


def _darker_than_around(image: Image.Image) -> FloatArray:
    grey = luma(image)
    if np.median(grey) < 128:  # white strokes on black: make them dark on light
        grey = 255.0 - grey
    out: FloatArray = np.clip(gaussian(grey, LINE_SIGMA) - grey, 0.0, None)
    return out


def lineart(image: Image.Image) -> Image.Image:
    soft = np.clip(_darker_than_around(image) * LINEART_GAIN, 0, 255).astype(np.uint8)
    return Image.fromarray(soft, mode="L").convert("RGB")


def scribble(image: Image.Image) -> Image.Image:
    lines = _darker_than_around(image) > SCRIBBLE_THRESHOLD
    thick = lines.copy()
    for dy, dx in NEIGHBOURS:
        thick |= _shift(lines, dy, dx, False)
    return _white_on_black(thick)


def tile(image: Image.Image) -> Image.Image:
    w, h = image.size
    small = image.convert("RGB").resize(
        (max(8, w // TILE_FACTOR), max(8, h // TILE_FACTOR)), Image.Resampling.BOX
    )
    return small.resize((w, h), Image.Resampling.BICUBIC)


PREPROCESSORS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "canny": canny,
    "lineart": lineart,
    "scribble": scribble,
    "tile": tile,
}


def prepare(control_type: str, image: Image.Image, width: int, height: int) -> Image.Image:
    """The ControlNet input for ``control_type`` from the client's ``image``: RGB, resized to
    ``width`` x ``height``, then preprocessed (types without a preprocessor: as it is)."""
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    step = PREPROCESSORS.get(control_type)
    return rgb if step is None else step(rgb)
