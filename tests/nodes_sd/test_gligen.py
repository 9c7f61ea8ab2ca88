"""GLIGEN text boxes through the real executor: a tiny GLIGEN file in the real layout for the tiny SD1 checkpoint,
checked against diffusers' own gated UNet carrying the same layers."""

from __future__ import annotations

import pytest
import torch

from nodes.models.errors import ModelFileError
from nodes.models.single_file import load_checkpoint
from nodes.models.state_dict import write_safetensors

from .test_pipeline import CKPT, capture, empty_latent, ksampler, txt2img
from .vision_files import gated_reference_unet, gligen_file_weights, style_adapter_weights

SIZE = 64


@pytest.fixture(scope="module")
def gated(env):
    folder = env.base / "models" / "gligen"
    folder.mkdir(exist_ok=True)
    base = load_checkpoint(env.base / "models" / "checkpoints" / CKPT, components=("unet",)).unet
    reference = gated_reference_unet(base)
    write_safetensors(folder / "tiny_gligen.safetensors", gligen_file_weights(reference))
    write_safetensors(folder / "not_gligen.safetensors", style_adapter_weights())
    return reference


def boxed(*boxes: tuple[int, int, int, int], gligen: str = "tiny_gligen.safetensors") -> dict:
    """txt2img whose positive prompt gets one GLIGEN box per (width, height, x, y)."""
    nodes = txt2img(seed=4)
    nodes["gl"] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": gligen}}
    positive = ["pos", 0]
    for i, (width, height, x, y) in enumerate(boxes):
        nodes[f"box{i}"] = {"class_type": "GLIGENTextBoxApply", "inputs": {
            "conditioning_to": positive, "clip": ["ckpt", 1], "gligen_textbox_model": ["gl", 0],
            "text": f"a blue square {i}", "width": width, "height": height, "x": x, "y": y}}
        positive = [f"box{i}", 0]
    nodes["sample"] = ksampler(["empty", 0], seed=4, pos=positive)
    nodes["out"] = capture(["sample", 0])
    nodes["cond"] = capture(positive)
    nodes["model"] = capture(["ckpt", 0])
    return nodes


def test_boxes_change_the_output_only_where_present(env, gated):
    plain = env.capture(txt2img(seed=4, steps=3) | {"out": capture(["sample", 0])})["samples"]
    one = env.capture(boxed((32, 32, 16, 8)))["samples"]
    assert not torch.allclose(one, plain, atol=1e-4)
    assert not torch.allclose(env.capture(boxed((32, 32, 16, 8), (16, 24, 0, 40)))["samples"], one, atol=1e-4)
    assert not torch.allclose(env.capture(boxed((32, 32, 0, 32)))["samples"], one, atol=1e-4)  # the box counts
    # the cached base UNet keeps no GLIGEN layer: the plain graph gives its result again
    result = env.run(txt2img(seed=4, steps=3) | {"out": capture(["sample", 0]), "model": capture(["ckpt", 0])})
    assert torch.equal(result.outputs["out"]["value"][0]["samples"], plain)
    unet = result.outputs["model"]["value"][0].unet
    assert not hasattr(unet, "position_net") and not any(".fuser." in k for k in unet.state_dict())


def test_unet_call_matches_diffusers_gated_unet(env, gated):
    result = env.run(boxed((32, 32, 16, 8), (16, 24, 0, 40)))
    assert result.ok, result.error
    model = result.outputs["model"]["value"][0]
    (context, options), = result.outputs["cond"]["value"][0]
    pooled = torch.stack([box[0].reshape(-1) for box in options["gligen"][2]])
    latent = SIZE // 8
    boxes = torch.zeros(1, 30, 4)
    boxes[0, 0] = torch.tensor([2, 1, 6, 5]) / latent  # x1, y1, x2, y2 of (x 16, y 8, 32 × 32) px
    boxes[0, 1] = torch.tensor([0, 5, 2, 8]) / latent  # (x 0, y 40, 16 × 24) px
    masks = torch.zeros(1, 30)
    masks[0, :2] = 1
    embeddings = torch.zeros(1, 30, pooled.shape[-1])
    embeddings[0, :2] = pooled
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, latent, latent, generator=g), torch.tensor([600.0])
    extra = model.extra_conds(options, 1, latent, latent)
    ours = model.apply_model(x, t, context, **extra)
    with torch.no_grad():
        expected = gated(x, t, encoder_hidden_states=context, cross_attention_kwargs={"gligen": {
            "boxes": boxes, "masks": masks, "positive_embeddings": embeddings}}).sample
        without = gated(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(ours, without, atol=1e-4)
    assert torch.allclose(model.apply_model(x, t, context), without, atol=1e-5)


def test_bad_gligen_files_are_clear_errors(env, gated):
    result = env.run(boxed((32, 32, 0, 0), gligen="not_gligen.safetensors"))
    assert not result.ok and result.error["node_type"] == "GLIGENLoader"
    assert "not_gligen.safetensors: not a GLIGEN model" in result.error["exception_message"]
    nodes = boxed((32, 32, 0, 0))
    nodes["ckpt"]["inputs"]["ckpt_name"] = "tiny_sdxl.safetensors"
    result = env.run(nodes)
    assert not result.ok and "does not fit this model family" in result.error["exception_message"]
    with pytest.raises(ModelFileError):
        from nodes.gligen import load_gligen
        load_gligen(env.base / "models" / "gligen" / "not_gligen.safetensors")
