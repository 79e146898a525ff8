"""The demo model's latent space: a scene layout map, 18 channels at 1/8 of the image side.

The demo VAE does not learn its latent space: each training scene is written straight into a
fixed, smooth *layout map*, and only the VAE's decoder (map -> pixels, a small renderer) and
encoder (pixels -> map) are trained. The denoiser then learns where objects go and what they
are on an 8 x 8 grid instead of learning shapes pixel by pixel, which is what lets the whole
model train in minutes on two CPU cores (see docs/adr/0206).

Channels, per 8 x 8 pixel cell (values roughly in [-1, 1]):

====  =========  ============================================================================
 ch   name       value
====  =========  ============================================================================
0-2   background RGB of the background, in every cell
3     presence   share of the cell inside the object's reach (a disk a little larger than
                 the shape), 0 where no object is
4-6   color      RGB of the object x presence
7-11  shape      one-hot circle, square, triangle, star, ring x presence
12-13 offset     (object centre - cell centre) / 2 cells, x presence
14    size       -1 small, +1 large, x presence
15    rotation   rotation / 8 degrees x presence
16-17 where      the cell's own x and y, -1 (left, top) to +1 (right, bottom): the same in
                 every scene. They tell the denoiser where each cell is from its first layer,
                 so "on the left" has something to attach to; the decoder ignores them.
====  =========  ============================================================================

Two objects sit at opposite anchors, so their reaches meet only in the two middle columns (or
rows), where a cell holds the sum of both; everywhere else a cell describes at most one object.
"""

from __future__ import annotations

import numpy as np

from imagegen_demo_model import scenes

CHANNELS = 18
FACTOR = 8  # image side / latent side
SHAPE_CHANNELS = {shape: 7 + i for i, shape in enumerate(scenes.SHAPES)}
CHANNEL_NAMES = (
    "background_r",
    "background_g",
    "background_b",
    "presence",
    "color_r",
    "color_g",
    "color_b",
    *(f"shape_{s}" for s in scenes.SHAPES),
    "offset_x",
    "offset_y",
    "size",
    "rotation",
    "where_x",
    "where_y",
)
SCALE = 0.5  # the VAE's scaling_factor is 1 / SCALE: latents the denoiser sees have std ~1
# model.json's "preview": how the gpu-worker paints step previews of this latent space without
# the decoder (the same picture as ``preview_rgb``; see imagegen_gpu_worker.adapters.registry).
PREVIEW = {"kind": "layout", "background": [0, 1, 2], "presence": 3, "color": [4, 5, 6]}


def _unit_rgb(name: str) -> np.ndarray:
    return np.asarray(scenes.COLORS[name], dtype=np.float32) / 127.5 - 1.0


def object_centre(
    scene: scenes.Scene, index: int, size: int = scenes.IMAGE_SIZE
) -> tuple[float, float]:
    """Pixel coordinates of object ``index``'s centre, exactly as ``scenes.render`` places it."""
    obj = scene.objects[index]
    ax, ay = scenes.POSITIONS[obj.position]
    dx, dy = scene.jitter[index]
    return ax * size + dx * size / 64, ay * size + dy * size / 64


def encode(scene: scenes.Scene, size: int = scenes.IMAGE_SIZE) -> np.ndarray:
    """The layout map of ``scene``: float32 array (CHANNELS, size/8, size/8)."""
    side = size // FACTOR
    out = np.zeros((CHANNELS, side, side), dtype=np.float32)
    out[0:3] = _unit_rgb(scene.background)[:, None, None]
    ramp = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    out[16] = ramp[None, :]
    out[17] = ramp[:, None]
    pixel = np.arange(size, dtype=np.float32) + 0.5
    cell_centre = (np.arange(side, dtype=np.float32) + 0.5) * FACTOR
    for i, obj in enumerate(scene.objects):
        cx, cy = object_centre(scene, i, size)
        reach = scenes.SIZES[obj.size] * size * 1.2 + 2.0
        inside = (pixel[None, :] - cx) ** 2 + (pixel[:, None] - cy) ** 2 <= reach**2
        presence = inside.reshape(side, FACTOR, side, FACTOR).mean(axis=(1, 3))
        out[3] += presence
        out[4:7] += _unit_rgb(obj.color)[:, None, None] * presence
        out[SHAPE_CHANNELS[obj.shape]] += presence
        out[12] += (cx - cell_centre[None, :]) / (2 * FACTOR) * presence
        out[13] += (cy - cell_centre[:, None]) / (2 * FACTOR) * presence
        out[14] += (1.0 if obj.size == "large" else -1.0) * presence
        out[15] += scene.rotation[i] / 8.0 * presence
    return out


def encode_batch(items: list[scenes.Scene], size: int = scenes.IMAGE_SIZE) -> np.ndarray:
    return np.stack([encode(s, size) for s in items])


def preview_rgb(latent: np.ndarray) -> np.ndarray:
    """A cheap picture of a (possibly noisy) layout map, no decoder: background blended with
    the object color by presence. (3, h, w) in [-1, 1]."""
    presence = np.clip(latent[3], 0.0, 1.0)
    return latent[0:3] * (1.0 - presence) + latent[4:7]
