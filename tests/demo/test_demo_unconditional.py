"""The pixel-space unconditional demo model: its trainer is seeded and resumable (an interrupted run ends where an
uninterrupted one does), the clean-shape scorer passes the renderer's images and fails noise, blur and two
shapes, and the committed model (750 steps; it does not yet draw clean shapes, see the README) puts its samples on
a plain background where the untrained architecture mostly does not (skipped when
models/checkpoints/graphengine-demo-uncond.safetensors is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "tools", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import train_demo_unconditional as trainer  # noqa: E402

MODEL = ROOT / "models" / "checkpoints" / "graphengine-demo-uncond.safetensors"
SAMPLES = 8
MAX_UNTRAINED_PLAIN = 5  # of 8; the trained model gets 8 (see bench/demo_unconditional_quality.py)


def _args(tmp_path: Path, steps: int):
    return trainer.parse_args(["--steps", str(steps), "--batch", "2", "--save-every", "1", "--warmup", "1",
                               "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.safetensors"),
                               "--untrained-out", str(tmp_path / "untrained.safetensors")])


def test_training_resumes_where_an_uninterrupted_run_ends(tmp_path):
    trainer.train(_args(tmp_path / "once", 2))
    trainer.train(_args(tmp_path / "twice", 1))
    trainer.train(_args(tmp_path / "twice", 2))
    once = torch.load(tmp_path / "once" / "work" / "state.pt", weights_only=True)
    twice = torch.load(tmp_path / "twice" / "work" / "state.pt", weights_only=True)
    assert once["step"] == twice["step"] == 2
    for key, value in once["ema"].items():
        assert torch.equal(value, twice["ema"][key]), key
    from nodes.models.pixel_unet import load_pixel_model

    exported = load_pixel_model(tmp_path / "once" / "out.safetensors")
    assert exported.metadata["graphengine.training_steps"] == "2"
    assert torch.equal(exported.unet.state_dict()["conv_in.weight"], once["ema"]["conv_in.weight"])


@pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL.name} is absent (train with "
                                                "tools/train_demo_unconditional.py)")
def test_trained_model_samples_have_a_plain_background_and_untrained_ones_mostly_not(tmp_path):
    import demo_unconditional_quality as bench

    from demo_quality import make_engine

    trained = bench.sample(make_engine(MODEL.parents[1], tmp_path / "trained"), SAMPLES, 25, "DDIMScheduler")
    bench.write_untrained(tmp_path / "untrained_models")
    untrained = bench.sample(make_engine(tmp_path / "untrained_models", tmp_path / "untrained"), SAMPLES, 25,
                             "DDIMScheduler")
    assert all(bench.clean_shape(image)["plain_border"] for image in trained)
    assert sum(bench.clean_shape(image)["plain_border"] for image in untrained) <= MAX_UNTRAINED_PLAIN
    assert not any(bench.clean_shape(image)["ok"] for image in untrained)


def test_scorer_passes_rendered_shapes_and_fails_noise_blur_and_two_shapes():
    import demo_unconditional_quality as bench
    import numpy as np
    from PIL import Image, ImageFilter

    images = bench.training_images(24)
    assert all(bench.clean_shape(image)["ok"] for image in images)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert not bench.clean_shape(noise)["ok"]
    for image in images[:6]:
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.5)))
        noisy = np.clip(image + np.random.default_rng(1).normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        two = image.copy()
        background = two[0, 0].astype(int)
        two[24:30, 24:30] = 255 - background  # a second blob, far from the background colour
        assert not bench.clean_shape(blurred)["ok"]
        assert not bench.clean_shape(noisy)["ok"]
        assert not bench.clean_shape(two)["ok"]
