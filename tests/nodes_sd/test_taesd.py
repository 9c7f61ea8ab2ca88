"""TAESD preview decoders: ComfyUI's file names and key layout, the method rules, and the bundled demo decoder's
fidelity to the demo VAE."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from graphengine import RuntimeConfig
from nodes.previews import preview_image, taesd_for
from nodes.services import Services
from nodes.taesd import build_tiny, decode_preview, find_decoder, load_decoder

REPO = Path(__file__).resolve().parents[2]
DEMO_DECODER = REPO / "models" / "vae_approx" / "taedemo_decoder.safetensors"
MIN_DEMO_PSNR_DB = 20.0  # the tool measured more on all held-out scenes (README); this guards against a broken file


def test_original_taesd_layout_loads_under_comfyui_file_name(tmp_path):
    reference = build_tiny({"latent_channels": 4})  # the published TAESD decoder's shape
    original = {f"{int(k.split('.')[2]) + 1}.{k.split('.', 3)[3]}": v.contiguous()
                for k, v in reference.state_dict().items() if k.startswith("decoder.layers.")}
    folder = tmp_path / "vae_approx"
    folder.mkdir()
    save_file(original, str(folder / "taesd_decoder.safetensors"))
    assert find_decoder([str(folder)], "sd1") == folder / "taesd_decoder.safetensors"
    assert find_decoder([str(folder)], "sdxl") is None
    loaded = load_decoder(folder / "taesd_decoder.safetensors")
    for key, value in reference.decoder.state_dict().items():
        assert torch.equal(loaded.decoder.state_dict()[key], value), key
    rgb = decode_preview(loaded, torch.randn(4, 5, 6))
    assert rgb.shape == (40, 48, 3) and 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0


def test_taesd_method_without_a_file_says_so_and_falls_back(tmp_path, caplog):
    services = Services(config=RuntimeConfig(base_dir=tmp_path))
    sdxl = SimpleNamespace(latent_space="sdxl")
    with caplog.at_level(logging.WARNING, logger="graphengine.previews"):
        assert taesd_for(services, sdxl, "taesd") is None
    assert "taesdxl_decoder" in caplog.text and "latent2rgb" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="graphengine.previews"):
        assert taesd_for(services, sdxl, "auto") is None  # auto: latent2rgb without a word
        assert taesd_for(services, sdxl, "latent2rgb") is None
    assert caplog.text == ""


@pytest.mark.skipif(not DEMO_DECODER.is_file(), reason="no distilled demo decoder yet: python tools/train_demo_taesd.py")
def test_demo_decoder_is_picked_for_the_demo_family_and_matches_the_vae():
    from nodes.models.single_file import load_checkpoint
    from tools.shapes_data import held_out_scenes, render

    services = Services(config=RuntimeConfig(base_dir=REPO))
    demo = SimpleNamespace(latent_space="custom")
    decoder = taesd_for(services, demo, "auto")
    assert decoder is not None and taesd_for(services, demo, "taesd") is decoder  # loaded once
    assert DEMO_DECODER.stat().st_size < 1_000_000
    loaded = load_checkpoint(REPO / "models" / "checkpoints" / "graphengine-demo.safetensors", dtype=torch.float32)
    scenes = random.Random(7).sample(held_out_scenes(), 6)
    pixels = torch.stack([torch.from_numpy(np.asarray(render(s, 1)[0], dtype=np.float32))
                          for s in scenes]).permute(0, 3, 1, 2) / 127.5 - 1.0
    with torch.no_grad():
        latents = loaded.vae.encode(pixels).latent_dist.mean
        reference = (loaded.vae.decode(latents).sample.clamp(-1, 1) + 1) / 2
    model_units = latents * loaded.latent_scale_factor
    for latent, want in zip(model_units, reference):
        got = decode_preview(decoder, latent)
        mse = float(((got - want.permute(1, 2, 0)) ** 2).mean())
        assert 10 * torch.log10(torch.tensor(1.0 / mse)) > MIN_DEMO_PSNR_DB
    image = preview_image(SimpleNamespace(latent_space="custom", preview_vae=None), model_units[:1], decoder)
    assert image is not None and image.size == (64, 64)
