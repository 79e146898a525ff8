"""Step previews: colours from the model's model.json, a fallback for models without one."""

from __future__ import annotations

import base64
import io

import pytest

from imagegen_gpu_worker.adapters.diffusers_runner import (
    LATENT_RGB,
    preview_png_b64,
    preview_rgb,
)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.unit


def test_without_a_preview_4_channel_latents_use_the_sd_factors() -> None:
    lat = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = torch.einsum("chw,cr->rhw", lat, torch.tensor(LATENT_RGB))
    assert torch.equal(preview_rgb(lat, None), expected)


def test_without_a_preview_other_latents_show_their_first_three_channels() -> None:
    lat = torch.randn(18, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(preview_rgb(lat, None), lat[:3])


def test_a_linear_preview_uses_the_models_factors() -> None:
    lat = torch.zeros(2, 4, 4)
    lat[1] = 1.0
    spec = {"kind": "linear", "latent_rgb": [[0.0, 0.0, 0.0], [1.0, 0.5, 0.0]]}
    rgb = preview_rgb(lat, spec)
    assert rgb.shape == (3, 4, 4) and rgb[:, 0, 0].tolist() == [1.0, 0.5, 0.0]


def test_a_layout_preview_paints_the_object_colour_where_it_is_present() -> None:
    lat = torch.zeros(7, 2, 2)
    lat[0:3] = -1.0  # black background everywhere
    lat[3, 0, 0] = 1.0  # an object in the top-left cell only
    lat[4:7, 0, 0] = torch.tensor([1.0, -1.0, -1.0])  # a red one
    spec = {"kind": "layout", "background": [0, 1, 2], "presence": 3, "color": [4, 5, 6]}
    rgb = preview_rgb(lat, spec)
    assert rgb[:, 0, 0].tolist() == [1.0, -1.0, -1.0] and rgb[:, 1, 1].tolist() == [-1.0] * 3


def test_the_preview_is_a_small_png() -> None:
    from PIL import Image

    b64 = preview_png_b64(torch.randn(1, 4, 8, 8), None)
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG" and max(image.size) <= 32


def test_16_channel_latents_without_a_preview_are_painted() -> None:
    from PIL import Image

    b64 = preview_png_b64(torch.randn(1, 16, 8, 8), None)  # SD3 / Flux VAEs' latents
    assert b64 is not None
    assert Image.open(io.BytesIO(base64.b64decode(b64))).size == (8, 8)


def test_packed_latents_are_painted_as_a_square_grid_of_tokens() -> None:
    from PIL import Image

    b64 = preview_png_b64(torch.randn(2, 16, 64), None)  # Flux: (batch, tokens, 4 x 16)
    assert b64 is not None
    assert Image.open(io.BytesIO(base64.b64decode(b64))).size == (4, 4)
    assert preview_png_b64(torch.randn(1, 12, 64), None) is None  # not square: no preview


def test_latents_with_fewer_than_three_channels_are_grey() -> None:
    lat = torch.randn(2, 4, 4)
    assert torch.equal(preview_rgb(lat, None), lat[:1].expand(3, -1, -1))
    assert preview_png_b64(torch.randn(1, 1, 4, 4), None) is not None
