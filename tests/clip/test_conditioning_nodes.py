"""Every conditioning node run through the real executor, with tiny CLIP models fed in by a test node."""

from typing import Annotated, Any

import pytest
import torch

from graphengine import Combo, Executor, Node, NodeOutput, NodeRegistry, Output, RuntimeConfig, Socket
from nodes import register
from nodes.clip import ClipModel


@pytest.fixture
def clips(clip_l, clip_g, tokenizer):
    return {"sd15": ClipModel([clip_l], tokenizer, "sd15"),
            "sdxl": ClipModel([clip_l, clip_g], tokenizer, "sdxl"),
            "sdxl_refiner": ClipModel([clip_g], tokenizer, "sdxl_refiner")}


@pytest.fixture
def run(tmp_path, clips):
    """Executes a prompt whose node "out" is a capture node; returns the captured value."""

    class TestClipSource(Node):
        """Hands out a prepared tiny CLIP."""
        RETURNS = (Output("CLIP"),)
        family: Annotated[str, Combo(sorted(clips))]

        def execute(self, ctx):
            return (clips[self.family],)

    class TestMaskSource(Node):
        """A 2-D mask (no batch axis)."""
        RETURNS = (Output("MASK"),)

        def execute(self, ctx):
            return (torch.ones(8, 8),)

    class TestCapture(Node):
        """Exposes its input in the UI output."""
        OUTPUT_NODE = True
        value: Annotated[Any, Socket("*")]

        def execute(self, ctx):
            return NodeOutput(values=(), ui={"value": [self.value]})

    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=tmp_path))
    registry.register_all([TestClipSource, TestMaskSource, TestCapture], python_module="tests")
    executor = Executor(registry)

    def execute(prompt, captured):
        prompt = {**prompt, "out": {"class_type": "TestCapture", "inputs": {"value": [captured, 0]}}}
        result = executor.execute(prompt)
        assert result.ok, result.error
        return result.outputs["out"]["value"][0]

    return execute


def clip_node(family="sd15"):
    return {"class_type": "TestClipSource", "inputs": {"family": family}}


def encode_node(text, clip="clip"):
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": [clip, 0]}}


def test_clip_text_encode(run, clips):
    cond = run({"clip": clip_node(), "enc": encode_node("a (cat:1.2)")}, "enc")
    expected, pooled = clips["sd15"].encode("a (cat:1.2)")
    assert len(cond) == 1 and torch.equal(cond[0][0], expected)
    assert torch.equal(cond[0][1]["pooled_output"], pooled)


def test_clip_set_last_layer(run, clips):
    prompt = {"clip": clip_node(), "skip": {"class_type": "CLIPSetLastLayer",
                                            "inputs": {"clip": ["clip", 0], "stop_at_clip_layer": -2}},
              "enc": encode_node("a cat", clip="skip")}
    cond = run(prompt, "enc")
    assert torch.equal(cond[0][0], clips["sd15"].clone(layer_idx=-2).encode("a cat")[0])
    assert not torch.equal(cond[0][0], clips["sd15"].encode("a cat")[0])


def two_prompts():
    return {"clip": clip_node(), "a": encode_node("a cat"), "b": encode_node("a dog " * 40)}


def test_conditioning_combine(run):
    out = run({**two_prompts(), "n": {"class_type": "ConditioningCombine",
                                      "inputs": {"conditioning_1": ["a", 0], "conditioning_2": ["b", 0]}}}, "n")
    assert [c.shape[1] for c, _ in out] == [77, 154]


def test_conditioning_average(run, clips):
    out = run({**two_prompts(), "n": {"class_type": "ConditioningAverage", "inputs": {
        "conditioning_to": ["a", 0], "conditioning_from": ["b", 0], "conditioning_to_strength": 0.25}}}, "n")
    a, pa = clips["sd15"].encode("a cat")
    b, pb = clips["sd15"].encode("a dog " * 40)
    assert out[0][0].shape == (1, 77, 32)
    assert torch.allclose(out[0][0], a * 0.25 + b[:, :77] * 0.75)
    assert torch.allclose(out[0][1]["pooled_output"], pa * 0.25 + pb * 0.75)


def test_conditioning_average_pads_a_shorter_source_with_zeros(run, clips):
    out = run({**two_prompts(), "n": {"class_type": "ConditioningAverage", "inputs": {
        "conditioning_to": ["b", 0], "conditioning_from": ["a", 0], "conditioning_to_strength": 0.5}}}, "n")
    a, _ = clips["sd15"].encode("a cat")
    b, _ = clips["sd15"].encode("a dog " * 40)
    assert torch.allclose(out[0][0][:, 77:], b[:, 77:] * 0.5)
    assert torch.allclose(out[0][0][:, :77], (a + b[:, :77]) * 0.5)


def test_conditioning_concat(run):
    out = run({**two_prompts(), "n": {"class_type": "ConditioningConcat",
                                      "inputs": {"conditioning_to": ["a", 0], "conditioning_from": ["b", 0]}}}, "n")
    assert out[0][0].shape == (1, 77 + 154, 32)


def test_conditioning_zero_out(run):
    out = run({**two_prompts(), "n": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["a", 0]}}},
              "n")
    assert not out[0][0].any() and out[0][0].shape == (1, 77, 32)
    assert not out[0][1]["pooled_output"].any()


def test_conditioning_set_area_keeps_the_input_unchanged(run):
    prompt = {**two_prompts(), "n": {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["a", 0], "width": 256, "height": 128, "x": 64, "y": 16, "strength": 0.7}}}
    out = run(prompt, "n")
    assert out[0][1]["area"] == (16, 32, 2, 8) and out[0][1]["strength"] == 0.7
    assert out[0][1]["set_area_to_bounds"] is False
    original = run(prompt, "a")   # cached upstream value must not have been mutated
    assert "area" not in original[0][1]


def test_conditioning_set_area_percentage_and_strength(run):
    out = run({**two_prompts(), "p": {"class_type": "ConditioningSetAreaPercentage", "inputs": {
        "conditioning": ["a", 0], "width": 0.5, "height": 0.25, "x": 0.1, "y": 0.2, "strength": 2.0}},
        "s": {"class_type": "ConditioningSetAreaStrength", "inputs": {"conditioning": ["p", 0], "strength": 3.0}}},
        "s")
    assert out[0][1]["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1) and out[0][1]["strength"] == 3.0


def test_conditioning_set_mask(run):
    out = run({**two_prompts(), "m": {"class_type": "TestMaskSource", "inputs": {}},
               "n": {"class_type": "ConditioningSetMask", "inputs": {
                   "conditioning": ["a", 0], "mask": ["m", 0], "strength": 0.5, "set_cond_area": "mask bounds"}}},
              "n")
    extras = out[0][1]
    assert extras["mask"].shape == (1, 8, 8) and extras["mask_strength"] == 0.5
    assert extras["set_area_to_bounds"] is True


def test_conditioning_set_timestep_range(run):
    out = run({**two_prompts(), "n": {"class_type": "ConditioningSetTimestepRange", "inputs": {
        "conditioning": ["a", 0], "start": 0.2, "end": 0.8}}}, "n")
    assert (out[0][1]["start_percent"], out[0][1]["end_percent"]) == (0.2, 0.8)


def test_clip_text_encode_sdxl(run, clips):
    out = run({"clip": clip_node("sdxl"), "n": {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["clip", 0], "width": 1024, "height": 768, "crop_w": 0, "crop_h": 32, "target_width": 1024,
        "target_height": 1024, "text_g": "a cat " * 50, "text_l": "a cat"}}}, "n")
    cond, extras = out[0]
    assert cond.shape == (1, 154, 80) and extras["pooled_output"].shape == (1, 40)
    assert {k: extras[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == {
        "width": 1024, "height": 768, "crop_w": 0, "crop_h": 32, "target_width": 1024, "target_height": 1024}
    l_part, _ = clips["sdxl"].encode("a cat")
    empty, _ = clips["sdxl"].encode("")
    assert torch.equal(cond[:, :77, :32], l_part[..., :32])
    assert torch.equal(cond[:, 77:, :32], empty[..., :32])   # L padded with empty-prompt windows


def test_clip_text_encode_sdxl_refiner(run, clips):
    out = run({"clip": clip_node("sdxl_refiner"), "n": {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {
        "ascore": 2.5, "width": 512, "height": 640, "text": "a cat", "clip": ["clip", 0]}}}, "n")
    cond, extras = out[0]
    assert cond.shape == (1, 77, 48) and extras["pooled_output"].shape == (1, 40)
    assert (extras["aesthetic_score"], extras["width"], extras["height"]) == (2.5, 512, 640)


def test_plain_encode_on_sdxl_has_no_size_keys(run):
    cond = run({"clip": clip_node("sdxl"), "enc": encode_node("a cat")}, "enc")
    assert cond[0][0].shape == (1, 77, 80) and set(cond[0][1]) == {"pooled_output"}


def test_object_info_matches_comfyui(tmp_path):
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=tmp_path))
    info = {name: registry.node_info(name) for name in (
        "CLIPTextEncode", "CLIPSetLastLayer", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "ConditioningSetArea",
        "ConditioningSetMask", "ConditioningZeroOut")}
    enc = info["CLIPTextEncode"]
    assert list(enc["input"]["required"]) == ["text", "clip"]
    assert enc["input"]["required"]["text"][1].get("multiline") is True
    assert enc["input"]["required"]["text"][1].get("dynamicPrompts") is True
    skip = info["CLIPSetLastLayer"]["input"]["required"]["stop_at_clip_layer"]
    assert skip[0] == "INT" and (skip[1]["default"], skip[1]["min"], skip[1]["max"]) == (-1, -24, -1)
    assert list(info["CLIPTextEncodeSDXL"]["input"]["required"]) == [
        "clip", "width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g", "text_l"]
    assert list(info["CLIPTextEncodeSDXLRefiner"]["input"]["required"]) == ["ascore", "width", "height", "text",
                                                                          "clip"]
    area = info["ConditioningSetArea"]["input"]["required"]
    assert [area[k][1]["default"] for k in ("width", "height", "x", "y", "strength")] == [64, 64, 0, 0, 1.0]
    assert info["ConditioningSetMask"]["input"]["required"]["set_cond_area"][0] == ["default", "mask bounds"]
    assert info["ConditioningZeroOut"]["category"] == "advanced/conditioning"


def test_clip_text_encode_without_clip_is_a_clear_error(tmp_path):
    class NoClip(Node):
        """A checkpoint without a text encoder."""
        RETURNS = (Output("CLIP"),)

        def execute(self, ctx):
            return (None,)

    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=tmp_path))
    registry.register_all([NoClip], python_module="tests")

    class Sink(Node):
        """Output node."""
        OUTPUT_NODE = True
        value: Annotated[Any, Socket("*")]

        def execute(self, ctx):
            return NodeOutput(values=(), ui={"value": [1]})

    registry.register_all([Sink], python_module="tests")
    result = Executor(registry).execute({"c": {"class_type": "NoClip", "inputs": {}},
                                         "e": encode_node("x", clip="c"),
                                         "s": {"class_type": "Sink", "inputs": {"value": ["e", 0]}}})
    assert not result.ok
    assert "clip input is invalid" in str(result.error)
