"""TAESD preview decoders: ComfyUI's file names and key layout, and the method rules."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from graphengine import RuntimeConfig
from nodes.previews import taesd_for
from nodes.services import Services
from nodes.taesd import build_tiny, decode_preview, find_decoder, load_decoder


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
