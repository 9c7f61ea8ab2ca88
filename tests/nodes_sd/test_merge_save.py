"""Model merging and saving through the real executor: ComfyUI's merge formulas and block ratios, merges never
touching the cached base models, saved checkpoints / LoRAs / parts that load back and reproduce the patched result."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from safetensors import safe_open

from graphengine import Executor
from nodes.lora.merge import AppliedMerge
from nodes.models.ldm_layout import unet_original_names
from nodes.models.single_file import load_text_encoder, load_unet, load_vae, save_checkpoint

from .test_lora_nodes import lora_node, loras  # noqa: F401 - the loras fixture
from .test_pipeline import capture, empty_latent, ksampler
from .tiny import tiny_text_encoder, tiny_unet, tiny_vae

A, B = "tiny_sd15.safetensors", "merge_b.safetensors"


@pytest.fixture(scope="module")
def second(env):
    """A second SD1.5-shaped checkpoint (other weights) to merge with the first."""
    save_checkpoint(env.base / "models" / "checkpoints" / B, tiny_unet(seed=11), tiny_vae(),
                    [tiny_text_encoder(seed=12)], "sd15")
    return B


def loaders() -> dict:
    return {"a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": A}},
            "b": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": B}}}


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def sampled(model: list, clip: list = ("a", 1), extra: dict | None = None) -> dict:
    """txt2img with `model`, prompts encoded by `clip`; outputs "out" (samples), "model", "cond"."""
    nodes = {**loaders(), **(extra or {}),
             "pos": node("CLIPTextEncode", text="a red circle", clip=list(clip)),
             "neg": node("CLIPTextEncode", text="", clip=list(clip)), "empty": empty_latent(),
             "sample": ksampler(["empty", 0], seed=3, model=list(model)),
             "out": capture(["sample", 0]), "model": capture(list(model)), "cond": capture(["pos", 0]),
             "clip": capture(list(clip))}
    return nodes


def run(executor: Executor, prompt: dict) -> dict:
    result = executor.execute(prompt)
    assert result.ok, result.error
    return {k: v["value"][0] for k, v in result.outputs.items() if "value" in v}


def merge(class_type: str = "ModelMergeSimple", **inputs) -> dict:
    return {"merge": node(class_type, model1=["a", 0], model2=["b", 0], **inputs)}


def weights(handle) -> dict[str, torch.Tensor]:
    """The handle's effective weights (patched, copied out, then restored)."""
    with handle.patched() as module:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unmerged(model):
    return dataclasses.replace(model, weight_patches=())


def other_model(merged):
    """model2 of a merged handle, as a handle of its own."""
    return dataclasses.replace(merged, unet_source=merged.weight_patches[0].other_sources["unet"], weight_patches=())


def clip_weights(clip) -> dict[str, torch.Tensor]:
    with clip.patched() as encoders:
        return {k: v.detach().clone() for k, v in encoders["te1"].state_dict().items()}


def network_out(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    return model.apply_model(x, torch.tensor([400.0]), context)


def saved(env, subfolder: str, name: str) -> list:
    return sorted((env.base / "output" / subfolder).glob(f"{name}_*_.safetensors"))


def test_object_info_inputs_match_comfyui(env):
    info = env.registry.object_info()
    ratio = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]
    assert info["ModelMergeSimple"]["input"]["required"] == {"model1": ["MODEL"], "model2": ["MODEL"], "ratio": ratio}
    assert info["ModelMergeSubtract"]["input"]["required"]["multiplier"] == [
        "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]
    assert list(info["ModelMergeAdd"]["input"]["required"]) == ["model1", "model2"]
    assert list(info["CLIPMergeSimple"]["input"]["required"]) == ["clip1", "clip2", "ratio"]
    assert list(info["CLIPMergeSubtract"]["input"]["required"]) == ["clip1", "clip2", "multiplier"]
    assert info["CLIPMergeAdd"]["output"] == ["CLIP"]
    assert list(info["ModelMergeBlocks"]["input"]["required"]) == ["model1", "model2", "input", "middle", "out"]
    sd1 = list(info["ModelMergeSD1"]["input"]["required"])
    assert sd1[:4] == ["model1", "model2", "time_embed.", "label_emb."] and sd1[-1] == "out."
    assert "input_blocks.11." in sd1 and "middle_block.2." in sd1 and len(sd1) == 2 + 2 + 12 + 3 + 12 + 1
    assert list(info["ModelMergeSD2"]["input"]["required"]) == sd1
    sdxl = list(info["ModelMergeSDXL"]["input"]["required"])
    assert "input_blocks.8" in sdxl and "output_blocks.8" in sdxl and len(sdxl) == 2 + 2 + 9 + 3 + 9 + 1
    assert info["ModelMergeSDXL"]["input"]["required"]["label_emb."] == ratio
    assert info["ModelMergeSD1"]["category"] == "advanced/model_merging/model_specific"
    save = info["CheckpointSave"]
    assert save["display_name"] == "Save Checkpoint" and save["output_node"] and save["output"] == []
    assert save["input"]["required"]["filename_prefix"] == ["STRING", {"default": "checkpoints/ComfyUI"}]
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    for name, default in [("CLIPSave", "clip/ComfyUI"), ("VAESave", "vae/ComfyUI_vae"),
                          ("ModelSave", "diffusion_models/ComfyUI")]:
        assert info[name]["input"]["required"]["filename_prefix"][1]["default"] == default
    lora = info["LoraSave"]["input"]
    assert lora["required"]["rank"] == ["INT", {"default": 8, "min": 1, "max": 4096, "step": 1}]
    assert lora["required"]["lora_type"][0] == ["standard", "full_diff"]
    assert lora["required"]["bias_diff"] == ["BOOLEAN", {"default": True}]
    assert lora["optional"] == {"model_diff": ["MODEL"], "text_encoder_diff": ["CLIP"]}


def test_ratio_one_is_model1_bit_exact_and_zero_is_model2(env, second):
    executor = Executor(env.registry)
    base_a = run(executor, sampled(["a", 0]))["out"]["samples"]
    base_b = run(executor, sampled(["b", 0]))["out"]["samples"]
    one = run(executor, sampled(["merge", 0], extra=merge(ratio=1.0)))["out"]["samples"]
    zero = run(executor, sampled(["merge", 0], extra=merge(ratio=0.0)))["out"]["samples"]
    assert torch.equal(one, base_a)
    assert not torch.allclose(base_a, base_b)
    torch.testing.assert_close(zero, base_b, rtol=1e-4, atol=1e-4)


def test_block_ratios_follow_the_ldm_blocks_and_match_a_hand_merged_module(env, second):
    got = run(Executor(env.registry), sampled(["merge", 0], extra=merge(
        "ModelMergeBlocks", input=0.2, middle=0.5, out=0.9)))
    merged = got["model"]
    a_unet, b_unet = weights(unmerged(merged)), weights(other_model(merged))
    ldm = unet_original_names(a_unet)
    hand = tiny_unet()
    state = {}
    for name, value in a_unet.items():
        block = ldm[name]
        # ComfyUI: "out" also prefixes output_blocks; weights of no block take the first ratio
        r = 0.5 if block.startswith("middle") else 0.9 if block.startswith("out") else 0.2
        state[name] = value * r + b_unet[name] * (1 - r)
    hand.load_state_dict(state)
    hand_model = dataclasses.replace(merged, unet_source=hand, weight_patches=(), manager=None)
    torch.testing.assert_close(network_out(merged), network_out(hand_model), rtol=1e-5, atol=1e-5)


def test_model_specific_node_merges_only_its_block(env, second):
    blocks = list(env.registry.object_info()["ModelMergeSD1"]["input"]["required"])[2:]
    ratios = {block: 0.0 if block == "middle_block.1." else 1.0 for block in blocks}
    got = run(Executor(env.registry), sampled(["merge", 0], extra=merge("ModelMergeSD1", **ratios)))
    merged = got["model"]
    mine, theirs, base = weights(merged), weights(other_model(merged)), weights(unmerged(merged))
    ldm = unet_original_names(mine)
    inside = [n for n in mine if ldm[n].startswith("middle_block.1.")]
    assert inside and all(torch.equal(mine[n], theirs[n]) for n in inside)
    assert all(torch.equal(mine[n], base[n]) for n in mine if n not in inside)


def test_merges_never_touch_the_cached_base_models(env, second):
    warm = Executor(env.registry)
    first = run(warm, sampled(["a", 0]))
    handle_a, handle_b = first["model"], run(warm, sampled(["b", 0]))["model"]
    before_a, before_b = weights(handle_a), weights(handle_b)
    merged = run(warm, sampled(["merge", 0], extra=merge(ratio=0.4)))
    subtracted = run(warm, sampled(["merge", 0], extra=merge("ModelMergeSubtract", multiplier=0.7)))
    assert not torch.equal(merged["out"]["samples"], first["out"]["samples"])
    assert not torch.equal(subtracted["out"]["samples"], merged["out"]["samples"])
    again = run(warm, sampled(["a", 0]))
    assert torch.equal(again["out"]["samples"], first["out"]["samples"])
    for before, handle in ((before_a, handle_a), (before_b, handle_b)):
        after = weights(handle)
        assert all(torch.equal(after[k], v) for k, v in before.items())


def test_subtract_add_and_clip_merges_use_comfyui_formulas(env, second):
    extra = {**merge("ModelMergeSubtract", multiplier=0.5),
             "add": node("ModelMergeAdd", model1=["a", 0], model2=["b", 0]),
             "clipmix": node("CLIPMergeSimple", clip1=["a", 1], clip2=["b", 1], ratio=0.25),
             "clipsub": node("CLIPMergeSubtract", clip1=["a", 1], clip2=["b", 1], multiplier=2.0),
             "clipadd": node("CLIPMergeAdd", clip1=["a", 1], clip2=["b", 1]),
             **{f"got_{k}": capture([k, 0]) for k in ("a", "b", "add", "clipmix", "clipsub", "clipadd")},
             "got_clip_a": capture(["a", 1]), "got_clip_b": capture(["b", 1])}
    got = run(Executor(env.registry), sampled(["merge", 0], clip=["clipmix", 0], extra=extra))
    wa, wb = weights(got["got_a"]), weights(got["got_b"])
    sub, add = weights(got["model"]), weights(got["got_add"])
    for name in ("conv_in.weight", "mid_block.attentions.0.proj_in.weight", "up_blocks.3.resnets.0.norm1.bias"):
        torch.testing.assert_close(sub[name], 0.5 * (wa[name] - wb[name]))
        torch.testing.assert_close(add[name], wa[name] + wb[name])
    ca, cb = clip_weights(got["got_clip_a"]), clip_weights(got["got_clip_b"])
    mix, csub, cadd = (clip_weights(got[f"got_{k}"]) for k in ("clipmix", "clipsub", "clipadd"))
    params = [k for k in ca if k.endswith(("weight", "bias"))]
    for name in params:
        torch.testing.assert_close(mix[name], 0.25 * ca[name] + 0.75 * cb[name])
        torch.testing.assert_close(csub[name], 2.0 * (ca[name] - cb[name]))
        torch.testing.assert_close(cadd[name], ca[name] + cb[name])
    base_cond = run(Executor(env.registry), sampled(["a", 0]))["cond"][0][0]
    assert not torch.allclose(got["cond"][0][0], base_cond)
    assert all(torch.equal(clip_weights(got["got_clip_a"])[k], v) for k, v in ca.items())


def test_a_merge_reads_the_other_models_own_patches(env, second, loras):
    lora_b = {"lb": lora_node(model=["b", 0], clip=["b", 1], strength_model=1.0)}
    with_lora = run(Executor(env.registry), sampled(["lb", 0], extra=lora_b))
    extra = {**lora_b, "merge": node("ModelMergeSimple", model1=["a", 0], model2=["lb", 0], ratio=0.0),
             "half": node("ModelMergeSimple", model1=["a", 0], model2=["la", 0], ratio=0.5),
             "la": lora_node(model=["a", 0], clip=["a", 1], strength_model=1.0), "got_half": capture(["half", 0]),
             "got_a": capture(["a", 0]), "got_la": capture(["la", 0])}
    got = run(Executor(env.registry), sampled(["merge", 0], extra=extra))
    torch.testing.assert_close(got["out"]["samples"], with_lora["out"]["samples"], rtol=1e-4, atol=1e-4)
    # model2 is model1's own module with a LoRA: A·0.5 + (A + ΔL)·0.5 = A + ΔL/2
    wa, wla, half = weights(got["got_a"]), weights(got["got_la"]), weights(got["got_half"])
    for name in wa:
        torch.testing.assert_close(half[name], wa[name] + 0.5 * (wla[name] - wa[name]), rtol=1e-5, atol=1e-6)
    assert isinstance(got["got_half"].weight_patches[-1], AppliedMerge)


def test_checkpoint_save_of_a_lora_model_loads_back_and_samples_alike(env, loras):
    extra = {"la": lora_node(model=["a", 0], clip=["a", 1]),
             "save": node("CheckpointSave", model=["la", 0], clip=["la", 1], vae=["a", 2],
                          filename_prefix="checkpoints/lora_baked")}
    patched = run(Executor(env.registry), sampled(["la", 0], clip=["la", 1], extra=extra))
    files = saved(env, "checkpoints", "lora_baked")
    assert [f.name for f in files] == ["lora_baked_00001_.safetensors"]
    with safe_open(str(files[0]), "pt") as f:
        metadata = f.metadata()
        assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in f.keys()
    assert metadata["modelspec.predict_key"] == "epsilon" and "prompt" in metadata
    shutil.copy(files[0], env.base / "models" / "checkpoints" / "lora_baked.safetensors")
    nodes = sampled(["a", 0])
    nodes["a"]["inputs"]["ckpt_name"] = "lora_baked.safetensors"
    loaded = run(Executor(env.registry), nodes)
    baked, expected = weights(loaded["model"]), weights(patched["model"])
    assert all(torch.equal(baked[k], v) for k, v in expected.items())
    assert torch.equal(loaded["cond"][0][0], patched["cond"][0][0])
    # equal weights in another module instance: float32 kernel rounding only, amplified over the steps
    difference = (loaded["out"]["samples"] - patched["out"]["samples"]).abs().max()
    assert difference < 1e-3 * patched["out"]["samples"].abs().max()
    run(Executor(env.registry), {**loaders(), **extra, "la": lora_node(model=["a", 0], clip=["a", 1])})
    assert len(saved(env, "checkpoints", "lora_baked")) == 2  # the counter moves on, nothing is overwritten


def test_model_clip_and_vae_saves_load_back(env, second):
    extra = {**merge(ratio=0.3), "clipmix": node("CLIPMergeSimple", clip1=["a", 1], clip2=["b", 1], ratio=0.6),
             "s_model": node("ModelSave", model=["merge", 0], filename_prefix="diffusion_models/merged"),
             "s_clip": node("CLIPSave", clip=["clipmix", 0], filename_prefix="clip/merged"),
             "s_vae": node("VAESave", vae=["b", 2], filename_prefix="vae/copied"),
             "got_clip": capture(["clipmix", 0]), "got_vae": capture(["b", 2])}
    got = run(Executor(env.registry), sampled(["merge", 0], extra=extra))
    unet = load_unet(saved(env, "diffusion_models", "merged")[0]).unet
    expected = weights(got["model"])
    assert all(torch.equal(v, expected[k]) for k, v in unet.state_dict().items())
    [clip_file] = saved(env, "clip", "merged_clip_l")
    with safe_open(str(clip_file), "pt") as f:
        assert f.metadata()["format"] == "pt"
        assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in f.keys()
    encoder = load_text_encoder(clip_file, kind="clip_l").model
    expected_clip = clip_weights(got["got_clip"])
    assert all(torch.equal(v, expected_clip[k]) for k, v in encoder.state_dict().items() if k in expected_clip)
    vae = load_vae(saved(env, "vae", "copied")[0])
    assert all(torch.equal(v, got["got_vae"].vae.state_dict()[k]) for k, v in vae.state_dict().items())


def test_lora_save_of_a_merge_difference_reproduces_the_merge(env, second):
    # A + B: its difference from A (B) has every kind of entry, norm weights (ones at init) included
    extra = {**merge("ModelMergeAdd"), "clipmix": node("CLIPMergeAdd", clip1=["a", 1], clip2=["b", 1]),
             "diff": node("ModelMergeSubtract", model1=["merge", 0], model2=["a", 0], multiplier=1.0),
             "clipdiff": node("CLIPMergeSubtract", clip1=["clipmix", 0], clip2=["a", 1], multiplier=1.0),
             "save": node("LoraSave", filename_prefix="loras/extracted", rank=4096, lora_type="standard",
                          bias_diff=True, model_diff=["diff", 0], text_encoder_diff=["clipdiff", 0]),
             "got_clip": capture(["clipmix", 0])}
    merged = run(Executor(env.registry), sampled(["merge", 0], clip=["clipmix", 0], extra=extra))
    [file] = saved(env, "loras", "extracted")
    with safe_open(str(file), "pt") as f:
        keys = set(f.keys())
    assert "diffusion_model.input_blocks.1.1.proj_in.lora_up.weight" in keys
    assert "diffusion_model.out.2.diff_b" in keys and "diffusion_model.out.0.diff" in keys
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_down.weight" in keys
    assert "text_encoders.clip_l.transformer.text_model.final_layer_norm.diff" in keys
    shutil.copy(file, env.base / "models" / "loras" / "extracted.safetensors")
    extra = {"la": lora_node("extracted.safetensors", model=["a", 0], clip=["a", 1], strength_model=1.0,
                             strength_clip=1.0)}
    loaded = run(Executor(env.registry), sampled(["la", 0], clip=["la", 1], extra=extra))
    assert not loaded["model"].weight_patches[0].match.unmatched
    mine, theirs = weights(loaded["model"]), weights(merged["model"])
    for name, value in theirs.items():  # float16 factors: about 1e-3 relative
        torch.testing.assert_close(mine[name], value, rtol=2e-3, atol=2e-3 * value.abs().max().item())
    torch.testing.assert_close(loaded["cond"][0][0], merged["cond"][0][0], rtol=1e-2, atol=1e-2)


def test_a_prefix_outside_the_output_folder_is_refused(env):
    result = Executor(env.registry).execute({**loaders(), "save": node(
        "VAESave", vae=["a", 2], filename_prefix="../escaped/vae")})
    assert result.status == "error" and result.error["node_type"] == "VAESave"
    assert "outside the output folder" in result.error["exception_message"]
    assert not (env.base / "escaped").exists()


def test_a_custom_family_checkpoint_saves_with_its_configs_and_not_as_a_lone_model(env):
    nodes = {"d": node("CheckpointLoaderSimple", ckpt_name="tiny_depth.safetensors"),
             "save": node("CheckpointSave", model=["d", 0], clip=["d", 1], vae=["d", 2],
                          filename_prefix="checkpoints/custom_copy"),
             "got": capture(["d", 0])}
    got = run(Executor(env.registry), nodes)
    [file] = saved(env, "checkpoints", "custom_copy")
    reloaded = load_unet(file).unet
    assert reloaded.config.in_channels == 5
    expected = weights(got["got"])
    assert all(torch.equal(v, expected[k]) for k, v in reloaded.state_dict().items())
    alone = Executor(env.registry).execute({"d": nodes["d"], "save": node(
        "ModelSave", model=["d", 0], filename_prefix="diffusion_models/custom_alone")})
    assert alone.status == "error" and "CheckpointSave" in alone.error["exception_message"]
    assert not saved(env, "diffusion_models", "custom_alone")


def test_checkpoint_save_marks_v_prediction_and_zsnr_and_loading_honours_the_marks(env):
    extra = {"ms": node("ModelSamplingDiscrete", model=["a", 0], sampling="v_prediction", zsnr=True),
             "save": node("CheckpointSave", model=["ms", 0], clip=["a", 1], vae=["a", 2],
                          filename_prefix="checkpoints/vzsnr")}
    patched = run(Executor(env.registry), sampled(["ms", 0], extra=extra))
    [saved_file] = saved(env, "checkpoints", "vzsnr")
    with safe_open(str(saved_file), "pt") as f:
        assert f.get_tensor("v_pred").numel() == 0 and f.get_tensor("ztsnr").numel() == 0
        assert f.metadata()["modelspec.predict_key"] == "v"
    shutil.copy(saved_file, env.base / "models" / "checkpoints" / "vzsnr.safetensors")
    nodes = sampled(["a", 0])
    nodes["a"]["inputs"]["ckpt_name"] = "vzsnr.safetensors"
    loaded = run(Executor(env.registry), nodes)
    sampling, expected = loaded["model"].model_sampling, patched["model"].model_sampling
    assert sampling.prediction == "v" and sampling.zsnr
    assert torch.equal(sampling.sigmas, expected.sigmas)  # the zero-terminal-SNR table, not the plain one
    plain = run(Executor(env.registry), sampled(["a", 0]))["model"].model_sampling
    assert plain.prediction == "eps" and not plain.zsnr and not torch.equal(plain.sigmas, sampling.sigmas)
