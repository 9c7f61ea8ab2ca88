"""TAESD preview decoders: ComfyUI's file names and key layout, the method rules, and the bundled demo decoder (picked
for the demo family, faithful to the demo VAE, and used for a server's `--preview-method taesd` previews)."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import torch
from safetensors.torch import save_file

from graphengine import Executor, ProgressPreview, RuntimeConfig, build_registry
from graphengine.server.cli import config_from_args, parser
from nodes.previews import preview_image, taesd_for
from nodes.services import Services
from nodes.taesd import build_tiny, decode_preview, find_decoder, load_decoder

REPO = Path(__file__).resolve().parents[2]
DEMO_DECODER = REPO / "models" / "vae_approx" / "taedemo_decoder.safetensors"
MIN_DEMO_PSNR_DB = 20.0  # bench/taesd_quality.py measures more on every held-out scene (README); this guards the file


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


def psnr_db(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((got - want) ** 2).mean()))


def test_bundled_demo_decoder_is_picked_for_the_demo_family_and_matches_the_vae():
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
        assert psnr_db(decode_preview(decoder, latent), want.permute(1, 2, 0)) > MIN_DEMO_PSNR_DB
    image = preview_image(SimpleNamespace(latent_space="custom", preview_vae=None), model_units[:1], decoder)
    assert image is not None and image.size == (64, 64)


def sampler_previews(tmp_path: Path, models_dir: Path, *flags: str) -> tuple[list, Services]:
    """The KSampler's preview images of the demo txt2img on a server started with `flags`."""
    args = parser().parse_args(["--base-dir", str(REPO), "--models-dir", str(models_dir), "--output-dir",
                                str(tmp_path), *flags])
    registry = build_registry(config_from_args(args).runtime_config())
    prompt = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
    executor = Executor(registry)
    events: list = []
    executor.events.subscribe(events.append)
    assert executor.execute(prompt).ok
    previews = [e.image for e in events if isinstance(e, ProgressPreview) and e.node == sampler]
    return previews, registry.services


def test_server_taesd_previews_come_from_the_bundled_demo_decoder(tmp_path):
    with_decoder, services = sampler_previews(tmp_path, REPO / "models", "--preview-method", "taesd")
    assert list(services.taesd._loaded) == [DEMO_DECODER]
    without = tmp_path / "models"  # the same models, no vae_approx/: the checkpoint's own VAE decodes previews
    (without / "checkpoints").mkdir(parents=True)
    shutil.copy(REPO / "models" / "checkpoints" / "graphengine-demo.safetensors", without / "checkpoints")
    by_vae, services = sampler_previews(tmp_path, without, "--preview-method", "taesd")
    assert "_loaded" not in vars(services.taesd) or not services.taesd._loaded
    steps = json.loads((REPO / "workflows" / "txt2img.json").read_text())["5"]["inputs"]["steps"]
    assert len(with_decoder) == len(by_vae) == steps
    # The last step's x0 is the picture the sampler ends with: both decoders draw it nearly alike. (Early x0s of a
    # few-step run lie off the VAE's training distribution, where the two may differ a lot.)
    got, want = (torch.from_numpy(np.asarray(i[-1], dtype=np.float32) / 255) for i in (with_decoder, by_vae))
    assert with_decoder[-1].size == by_vae[-1].size == (64, 64)
    assert not torch.equal(got, want)  # decoded by a different network …
    assert psnr_db(got, want) > MIN_DEMO_PSNR_DB - 2  # … that draws nearly the same picture
