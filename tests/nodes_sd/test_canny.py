"""Canny (kornia) through the executor: ComfyUI's inputs, and edges exactly along a synthetic square's outline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from .test_pipeline import capture, load_image

SIZE, TOP, BOTTOM = 32, 8, 24  # a white square over rows/cols 8..23 on black


@pytest.fixture(scope="module")
def square(env) -> str:
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    pixels[TOP:BOTTOM, TOP:BOTTOM] = 255
    PILImage.fromarray(pixels).save(env.base / "input" / "square.png")
    return "square.png"


def canny(env, image: str, low: float = 0.4, high: float = 0.8) -> torch.Tensor:
    return env.capture({"img": load_image(image), "canny": {"class_type": "Canny", "inputs": {
        "image": ["img", 0], "low_threshold": low, "high_threshold": high}}, "out": capture(["canny", 0])})


def test_object_info_has_comfyuis_inputs(env):
    info = env.registry.object_info()["Canny"]
    assert info["input"]["required"] == {
        "image": ["IMAGE"],
        "low_threshold": ["FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}],
        "high_threshold": ["FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99, "step": 0.01}]}
    assert info["output"] == ["IMAGE"] and info["category"] == "image/preprocessors"


def test_edges_lie_on_the_outline_of_a_square(env, square):
    edges = canny(env, square)
    assert edges.shape == (1, SIZE, SIZE, 3)
    assert torch.equal(edges[..., 0], edges[..., 1]) and torch.equal(edges[..., 0], edges[..., 2])
    assert set(edges.unique().tolist()) == {0.0, 1.0}
    on = edges[0, ..., 0] > 0
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    # the square's boundary runs between pixels 7|8 and 23|24
    inside = (rows >= TOP) & (rows < BOTTOM) & (cols >= TOP) & (cols < BOTTOM)
    def by_line(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # within a pixel of a side's line, along it
        return ((a - (TOP - 0.5)).abs().minimum((a - (BOTTOM - 0.5)).abs()) <= 1) & (b >= TOP - 1) & (b <= BOTTOM)
    near = by_line(rows, cols) | by_line(cols, rows)
    assert not on[~near].any()  # no edge away from the outline: not inside the square, not on the black
    for side in (on[TOP - 1:TOP + 1, TOP + 2:BOTTOM - 2], on[BOTTOM - 1:BOTTOM + 1, TOP + 2:BOTTOM - 2],
                 on[TOP + 2:BOTTOM - 2, TOP - 1:TOP + 1].T, on[TOP + 2:BOTTOM - 2, BOTTOM - 1:BOTTOM + 1].T):
        assert side.any(dim=0).all()  # every side is traced along its whole length
    assert not on[inside & ~near].any()


def test_a_flat_image_has_no_edges_and_thresholds_matter(env, square):
    assert canny(env, "scene.png", 0.01, 0.02).sum() > canny(env, "scene.png", 0.6, 0.9).sum()
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    PILImage.fromarray(flat).save(env.base / "input" / "flat.png")
    assert canny(env, "flat.png").sum() == 0
