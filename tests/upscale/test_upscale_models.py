"""Upscale models through spandrel: ESRGAN-layout files detected without hints, output size = input × scale, tiled
equal to untiled away from the seams, progress per tile, cancellation between tiles, smaller tiles after
out-of-memory errors, and a clear error (in a fresh interpreter) when spandrel cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from graphengine import Interrupted
from nodes.handles import tile_starts
from nodes.upscale import SpandrelNet, UpscaleModel
from tests.nodes_basic.helpers import const

from .conftest import ROOT
from .spandrel_support import esrgan_state_dict, require_spandrel

# A 1-block RRDBNet sees about 18 input pixels around each pixel (17 3x3 convs before upsampling, then 4 at
# fractions of an input pixel): farther than this from a tile's inner edge, a tile computes the exact value.
RECEPTIVE_RADIUS = 20


@pytest.fixture(scope="module")
def spandrel():
    return require_spandrel()


def upscale_prompt(model_name: str, image: torch.Tensor) -> dict:
    return {"m": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
            "i": const("Image", image),
            "n": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["m", 0], "image": ["i", 0]}},
            "out": {"class_type": "Capture", "inputs": {"value": ["n", 0]}},
            "model": {"class_type": "Capture", "inputs": {"value": ["m", 0]}}}


def random_image(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("name", "scale"), [("esrgan_x4.safetensors", 4), ("realesrgan_x2.pth", 2)])
def test_output_is_input_times_the_detected_scale(spandrel, upscale_env, name, scale):
    image = random_image(2, 12, 20)
    result = upscale_env.run(upscale_prompt(name, image))
    assert result.ok, result.error
    model = result.outputs["model"]["value"][0]
    assert (model.architecture, model.scale) == ("ESRGAN", scale)
    out = result.outputs["out"]["value"][0]
    assert out.shape == (2, 12 * scale, 20 * scale, 3)
    assert 0.0 <= out.min() and out.max() <= 1.0
    # the same weights run by spandrel's own loader on the whole image (one tile here)
    reference = spandrel.ModelLoader().load_from_file(str(upscale_env.base / "models/upscale_models" / name))
    expected = torch.cat([reference(img.movedim(-1, 0)[None]) for img in image]).movedim(1, -1)
    assert torch.allclose(out, expected, atol=1e-5)


def exact_region(size: int, tile: int, overlap: int, scale: int) -> torch.Tensor:
    """Output positions along one axis where every tile covering them is at least RECEPTIVE_RADIUS input pixels
    away from its inner edges (the image's own borders are not seams)."""
    good = torch.ones(size, dtype=torch.bool)
    for start in tile_starts(size, tile, overlap):
        end = start + tile
        inside = torch.arange(size)
        covered = (inside >= start) & (inside < end)
        near_left = (inside < start + RECEPTIVE_RADIUS) if start > 0 else torch.zeros(size, dtype=torch.bool)
        near_right = (inside >= end - RECEPTIVE_RADIUS) if end < size else torch.zeros(size, dtype=torch.bool)
        good &= ~(covered & (near_left | near_right))
    return good.repeat_interleave(scale)


def test_tiled_equals_untiled_away_from_seams(spandrel):
    net = load_upscale_model_from(esrgan_state_dict(4, seed=2), spandrel)
    model = UpscaleModel.of(net, None)
    image = random_image(1, 128, 112, seed=3)
    untiled = model.upscale(image, tile=512)
    tiled = model.upscale(image, tile=80, overlap=56)
    assert tiled.shape == untiled.shape == (1, 512, 448, 3)
    rows, cols = exact_region(128, 80, 56, 4), exact_region(112, 80, 56, 4)
    assert rows.float().mean() > 0.3 and cols.float().mean() > 0.3
    region = rows[:, None] & cols[None, :]
    assert torch.allclose(tiled[0][region], untiled[0][region], atol=1e-5)
    assert not torch.allclose(tiled[0][~region], untiled[0][~region], atol=1e-5)  # the seams do differ


def load_upscale_model_from(tensors: dict, spandrel) -> SpandrelNet:
    return SpandrelNet(spandrel.ModelLoader().load_from_state_dict(tensors).eval())


def test_progress_per_tile_of_each_image_and_cancel_between_tiles(spandrel):
    model = UpscaleModel.of(load_upscale_model_from(esrgan_state_dict(4, seed=4), spandrel), None)
    image = random_image(2, 40, 24, seed=5)
    calls = []
    out = model.upscale(image, lambda done, total: calls.append((done, total)), tile=24, overlap=8)
    assert out.shape == (2, 160, 96, 3)
    per_image = len(tile_starts(40, 24, 8)) * len(tile_starts(24, 24, 8))  # 3 x 1
    total = 2 * per_image
    assert calls == [(i, total) for i in range(total + 1)]

    seen = []

    def cancel_at_third(done, total_):
        seen.append(done)
        if done == 2:
            raise Interrupted("cancelled")

    with pytest.raises(Interrupted):
        model.upscale(image, cancel_at_third, tile=24, overlap=8)
    assert seen == [0, 1, 2]


class OutOfMemoryAbove(torch.nn.Module):
    """A stand-in network (2x nearest) that runs out of memory on tiles larger than `limit` pixels a side."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(pixels.shape[-2:]))
        if max(pixels.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return F.interpolate(pixels, scale_factor=2, mode="nearest")


@pytest.mark.parametrize(("limit", "tile_used"), [(300, 256), (128, 128)])
def test_out_of_memory_halves_the_tile_down_to_128(limit, tile_used):
    net = OutOfMemoryAbove(limit)
    model = UpscaleModel(net, "stand-in", 2, 3, 3)
    image = random_image(1, 600, 520, seed=6)
    out = model.upscale(image)
    assert torch.allclose(out, image.repeat_interleave(2, 1).repeat_interleave(2, 2), atol=1e-6)
    tried = sorted(set(net.sizes), reverse=True)
    assert tried[0] == 512 and net.sizes[-1] == tile_used  # started at 512, finished at the first size that fit


def test_out_of_memory_at_the_smallest_tile_is_raised():
    model = UpscaleModel(OutOfMemoryAbove(100), "stand-in", 2, 3, 3)
    with pytest.raises(torch.OutOfMemoryError):
        model.upscale(random_image(1, 600, 200))


def test_a_file_no_architecture_matches_fails_naming_it(spandrel, upscale_env):
    result = upscale_env.run(upscale_prompt("sub/not_an_upscaler.safetensors", random_image(1, 8, 8)))
    assert not result.ok
    assert result.error["node_type"] == "UpscaleModelLoader"
    assert "not_an_upscaler.safetensors" in result.error["exception_message"]


SPANDREL_MISSING = textwrap.dedent("""
    import json, sys
    sys.modules["spandrel"] = None  # `import spandrel` now raises ImportError, as when it is not installed
    from graphengine import Executor, NodeRegistry, RuntimeConfig
    from nodes import register
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=sys.argv[1], input_dir=sys.argv[2]))
    info = registry.object_info()
    prompt = {
        "m": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "esrgan_x4.safetensors"}},
        "e": {"class_type": "LoadImage", "inputs": {"image": "img2img_init.png"}},
        "n": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["m", 0], "image": ["e", 0]}},
        "s": {"class_type": "PreviewImage", "inputs": {"images": ["n", 0]}},
    }
    result = Executor(registry).execute(prompt)
    print(json.dumps({"listed": info["UpscaleModelLoader"]["input"]["required"]["model_name"][0],
                      "upscale_listed": "ImageUpscaleWithModel" in info, "error": result.error}))
""")


def test_loader_without_spandrel_fails_saying_what_to_install(upscale_env):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SPANDREL_MISSING, str(upscale_env.base), str(Path(ROOT) / "input")],
                          capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "esrgan_x4.safetensors" in report["listed"] and report["upscale_listed"]
    error = report["error"]
    assert error["node_id"] == "m" and error["node_type"] == "UpscaleModelLoader"
    assert error["exception_type"] == "nodes.upscale.SpandrelUnavailable"
    assert 'pip install "graphengine[upscale]"' in error["exception_message"]
    assert "spandrel" in error["exception_message"]
