"""FreeU, FreeU_V2, the attention multiply nodes, PatchModelAddDownscale and HyperTile through the real executor:
ComfyUI's inputs in /object_info, identity settings give the base result, other settings change it, and the cached
base model on a warm executor gives its own result before and after patched runs (the live UNet keeps no hook)."""

from __future__ import annotations

import pytest
import torch

from graphengine import Executor

from .test_lora_nodes import cond, run, samples
from .test_module_patch_math import hook_state
from .test_pipeline import base_nodes, capture, empty_latent, ksampler

SIZE = 128  # a 16x16 latent: the tiny UNet's deepest level is 2x2

FREEU_INPUTS = {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}


def factor(default: float) -> list:
    return ["FLOAT", {"default": default, "min": 0.0, "max": 10.0, "step": 0.01}]


def patch_node(class_type: str, **inputs) -> dict:
    socket = "clip" if class_type == "CLIPAttentionMultiply" else "model"
    return {"class_type": class_type, "inputs": {socket: ["ckpt", 1 if socket == "clip" else 0], **inputs}}


def graph(*patches: dict) -> dict:
    """txt2img at SIZE; MODEL and CLIP pass through the given patch nodes in order."""
    nodes = {**base_nodes(), "empty": empty_latent(size=SIZE)}
    model, clip = ["ckpt", 0], ["ckpt", 1]
    for i, patch in enumerate(patches):
        socket = "clip" if patch["class_type"] == "CLIPAttentionMultiply" else "model"
        nodes[f"p{i}"] = {**patch, "inputs": {**patch["inputs"], socket: clip if socket == "clip" else model}}
        if socket == "clip":
            clip = [f"p{i}", 0]
        else:
            model = [f"p{i}", 0]
    nodes["pos"]["inputs"]["clip"] = clip
    nodes["neg"]["inputs"]["clip"] = clip
    nodes["sample"] = ksampler(["empty", 0], seed=5, model=model)
    nodes["out"] = capture(["sample", 0])
    nodes["cond"] = capture(["pos", 0])
    nodes["model"] = capture(["ckpt", 0])
    return nodes


@pytest.fixture(scope="module")
def base(env):
    return run(Executor(env.registry), graph())


def test_object_info_has_comfyuis_inputs(env):
    info = env.registry.object_info()
    for name, defaults in {"FreeU": (1.1, 1.2, 0.9, 0.2), "FreeU_V2": (1.3, 1.4, 0.9, 0.2)}.items():
        assert info[name]["input"]["required"] == {"model": ["MODEL"],
                                                   **{k: factor(d) for k, d in zip(FREEU_INPUTS, defaults)}}
        assert info[name]["output"] == ["MODEL"] and info[name]["category"] == "model_patches/unet"
    for name, socket in {"UNetSelfAttentionMultiply": "MODEL", "UNetCrossAttentionMultiply": "MODEL",
                         "CLIPAttentionMultiply": "CLIP"}.items():
        assert info[name]["input"]["required"] == {socket.lower(): [socket],
                                                   **{k: factor(1.0) for k in ("q", "k", "v", "out")}}
        assert info[name]["output"] == [socket]
        assert info[name]["category"] == "_for_testing/attention_experiments"
    shrink = info["PatchModelAddDownscale"]
    methods = [["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]]
    assert shrink["input"]["required"] == {
        "model": ["MODEL"],
        "block_number": ["INT", {"default": 3, "min": 1, "max": 32, "step": 1}],
        "downscale_factor": ["FLOAT", {"default": 2.0, "min": 0.1, "max": 9.0, "step": 0.001}],
        "start_percent": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}],
        "end_percent": ["FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.001}],
        "downscale_after_skip": ["BOOLEAN", {"default": True}],
        "downscale_method": methods, "upscale_method": methods}
    assert shrink["display_name"] == "PatchModelAddDownscale (Kohya Deep Shrink)"
    assert shrink["output"] == ["MODEL"] and shrink["category"] == "model_patches/unet"
    tile = info["HyperTile"]
    assert tile["input"]["required"] == {
        "model": ["MODEL"], "tile_size": ["INT", {"default": 256, "min": 1, "max": 2048}],  # ComfyUI sends no step
        "swap_size": ["INT", {"default": 2, "min": 1, "max": 128}],
        "max_depth": ["INT", {"default": 0, "min": 0, "max": 10}],
        "scale_depth": ["BOOLEAN", {"default": False}]}
    assert tile["output"] == ["MODEL"] and tile["category"] == "model_patches/unet"


def test_identity_settings_give_the_base_result(env, base):
    executor = Executor(env.registry)
    ones = {k: 1.0 for k in ("q", "k", "v", "out")}
    multiplied = run(executor, graph(patch_node("UNetSelfAttentionMultiply", **ones),
                                     patch_node("UNetCrossAttentionMultiply", **ones),
                                     patch_node("CLIPAttentionMultiply", **ones)))
    assert torch.equal(samples(multiplied), samples(base))
    assert torch.equal(cond(multiplied), cond(base))
    for name in ("FreeU", "FreeU_V2"):  # b = s = 1: only the skip filter's FFT round trip (float32) remains,
        neutral = run(executor, graph(patch_node(name, b1=1.0, b2=1.0, s1=1.0, s2=1.0)))  # amplified by cfg 5
        torch.testing.assert_close(samples(neutral), samples(base), atol=2e-3, rtol=0)
    outside = run(executor, graph(patch_node("PatchModelAddDownscale", block_number=2, downscale_factor=2.0,
                                             start_percent=0.6, end_percent=0.9, downscale_after_skip=True,
                                             downscale_method="bicubic", upscale_method="bicubic")))
    assert torch.equal(samples(outside), samples(base))  # the 3 steps run at timesteps 999, 500, 0: none inside


def shrink_node(**overrides) -> dict:
    inputs = {"block_number": 2, "downscale_factor": 2.0, "start_percent": 0.0, "end_percent": 0.35,
              "downscale_after_skip": True, "downscale_method": "bicubic", "upscale_method": "bicubic"}
    return patch_node("PatchModelAddDownscale", **{**inputs, **overrides})


PATCHED = {
    "FreeU": patch_node("FreeU", **FREEU_INPUTS),
    "FreeU_V2": patch_node("FreeU_V2", b1=1.3, b2=1.4, s1=0.9, s2=0.2),
    "self": patch_node("UNetSelfAttentionMultiply", q=1.5, k=1.0, v=0.5, out=1.2),
    "cross": patch_node("UNetCrossAttentionMultiply", q=1.0, k=2.0, v=1.0, out=0.8),
    "shrink": shrink_node(),
    "shrink_before_skip": shrink_node(downscale_after_skip=False, downscale_method="bislerp",
                                      upscale_method="nearest-exact"),
    "HyperTile": patch_node("HyperTile", tile_size=64, swap_size=2, max_depth=1, scale_depth=False),
}


def test_each_patch_changes_the_result_and_the_cached_model_stays_clean(env, base):
    executor = Executor(env.registry)  # one result cache and one model manager for the whole sequence
    first = run(executor, graph())
    unet = first.outputs["model"]["value"][0].unet
    clean = hook_state(unet)
    results = {}
    for name, node in PATCHED.items():
        results[name] = samples(run(executor, graph(node)))
        assert torch.isfinite(results[name]).all()
        assert (results[name] - samples(base)).abs().max() > 2e-2, name
        assert hook_state(unet) == clean, name
        assert torch.equal(samples(run(executor, graph())), samples(base))
    for name, node in PATCHED.items():  # and the patched graphs again, after the others, on the warm cache
        assert torch.equal(samples(run(Executor(env.registry), graph(node))), results[name])


def test_clip_attention_multiply_changes_the_conditioning_only_while_encoding(env, base):
    executor = Executor(env.registry)
    scaled = run(executor, graph(patch_node("CLIPAttentionMultiply", q=1.0, k=1.0, v=1.5, out=0.5)))
    assert (cond(scaled) - cond(base)).abs().max() > 1e-3
    again = run(executor, graph())
    assert torch.equal(cond(again), cond(base))


def test_patches_stack_in_one_model(env, base):
    chained = graph(PATCHED["FreeU"], PATCHED["cross"], PATCHED["shrink"])
    stacked = samples(run(Executor(env.registry), chained))
    assert torch.isfinite(stacked).all()
    for name in ("FreeU", "cross", "shrink"):
        assert not torch.equal(stacked, samples(run(Executor(env.registry), graph(PATCHED[name]))))


def test_clip_attention_multiply_reaches_both_sdxl_text_encoders(env):
    def encoded(*patches: dict) -> torch.Tensor:
        nodes = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}}}
        clip = ["ckpt", 1]
        for i, patch in enumerate(patches):
            nodes[f"p{i}"] = {**patch, "inputs": {**patch["inputs"], "clip": clip}}
            clip = [f"p{i}", 0]
        nodes["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": clip}}
        nodes["cond"] = capture(["pos", 0])
        return cond(run(Executor(env.registry), nodes))

    base = encoded()
    scaled = encoded(patch_node("CLIPAttentionMultiply", q=1.0, k=1.0, v=1.5, out=0.5))
    width_l = 32  # CLIP-L's features come first, OpenCLIP-G's after them
    assert (scaled[..., :width_l] - base[..., :width_l]).abs().max() > 1e-3
    assert (scaled[..., width_l:] - base[..., width_l:]).abs().max() > 1e-3
    assert torch.equal(encoded(), base)
