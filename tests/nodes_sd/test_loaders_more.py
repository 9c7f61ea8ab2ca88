"""DualCLIPLoader and DiffusersLoader on files written in their real layouts."""

from __future__ import annotations

import json

import torch

from nodes.models import load_checkpoint, load_tokenizer, save_checkpoint
from nodes.models.families import FAMILIES, read_config

from .test_pipeline import capture, empty_latent, ksampler
from .tiny import tiny_clip_g


def encoded(env, clip: dict, slot: int = 0) -> tuple:
    out = env.capture({"clip": clip, "enc": {"class_type": "CLIPTextEncode", "inputs": {
        "text": "a red circle", "clip": ["clip", slot]}}, "out": capture(["enc", 0])})
    return out[0][0], out[0][1]["pooled_output"]


def test_dual_clip_loader_gives_the_sdxl_checkpoints_clip_in_either_order(env):
    folder = env.base / "models" / "text_encoders"
    save_checkpoint(folder / "tiny_clip_g.safetensors", None, None, [tiny_clip_g()], "sdxl_refiner")
    checkpoint = encoded(env, {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
                         1)
    for first, second in (("tiny_clip.safetensors", "tiny_clip_g.safetensors"),
                          ("tiny_clip_g.safetensors", "tiny_clip.safetensors")):
        dual = encoded(env, {"class_type": "DualCLIPLoader", "inputs": {
            "clip_name1": first, "clip_name2": second, "type": "sdxl"}})
        assert torch.equal(dual[0], checkpoint[0]) and torch.equal(dual[1], checkpoint[1])
    result = env.run({"clip": {"class_type": "DualCLIPLoader", "inputs": {
        "clip_name1": "tiny_clip.safetensors", "clip_name2": "tiny_clip.safetensors", "type": "sdxl"}},
        "out": capture(["clip", 0])})
    assert not result.ok and "clip_l and one open_clip_g" in result.error["exception_message"]


def test_diffusers_loader_reads_a_pipeline_folder_like_the_checkpoint(env):
    root = env.base / "models" / "diffusers" / "tiny_pipe"
    # the modules as the single-file loader builds them (its configs), saved in the diffusers layout
    loaded = load_checkpoint(env.base / "models" / "checkpoints" / "tiny_sd15.safetensors")
    unet, vae, text = loaded.unet, loaded.vae, loaded.text_encoders[0].model
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    load_tokenizer().save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(read_config(FAMILIES["sd15"].config_dir,
                                                                                      "scheduler")))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"]}))
    assert "tiny_pipe" in env.registry.object_info()["DiffusersLoader"]["input"]["required"]["model_path"][0]

    def sampled(loader: dict) -> torch.Tensor:
        return env.capture({"ckpt": loader, "pos": {"class_type": "CLIPTextEncode", "inputs": {
            "text": "a red circle", "clip": ["ckpt", 1]}}, "neg": {"class_type": "CLIPTextEncode", "inputs": {
                "text": "", "clip": ["ckpt", 1]}}, "empty": empty_latent(), "sample": ksampler(["empty", 0], seed=2),
            "out": capture(["sample", 0])})["samples"]

    folder = sampled({"class_type": "DiffusersLoader", "inputs": {"model_path": "tiny_pipe"}})
    single = sampled({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}})
    # equal weights in other module instances: float32 kernel rounding only, amplified over the steps
    assert (folder - single).abs().max() < 1e-4 * single.abs().max()
