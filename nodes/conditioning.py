"""Conditioning nodes: prompt encoding, clip skip and the CONDITIONING list operations (ComfyUI's class names).

CONDITIONING is a list of [cond tensor [1, T, D], extras dict] pairs. Nodes never mutate their inputs: every
entry they change is a fresh pair with a copied dict (values the executor cached stay intact).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import torch

from graphengine import Combo, Float, Int, Node, Output, String
from nodes import costs
from nodes.types import MAX_RESOLUTION, Clip, Conditioning, Mask

log = logging.getLogger(__name__)

_NO_CLIP = ("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint "
            "does not contain a valid clip or text encoder model.")

PromptText = Annotated[str, String(multiline=True, dynamic_prompts=True)]


def with_values(conditioning: list, values: dict[str, Any]) -> list:
    """A copy of `conditioning` whose every extras dict also holds `values`."""
    return [[cond, {**extras, **values}] for cond, extras in conditioning]


def _require_clip(clip: Any) -> Any:
    if clip is None:
        raise RuntimeError(_NO_CLIP)
    return clip


class CLIPTextEncode(Node):
    """Encodes a text prompt with a CLIP model into an embedding that guides the diffusion model."""

    DISPLAY_NAME = "CLIP Text Encode (Prompt)"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    text: PromptText
    clip: Clip

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.text_encode(inputs.get("text"))

    def execute(self, ctx) -> tuple:
        return (_require_clip(self.clip).encode_conditioning(self.text, progress=ctx.progress),)


class CLIPSetLastLayer(Node):
    """Stops the CLIP text encoder at an earlier layer (clip skip): -1 is the last layer, -2 the penultimate…"""

    DISPLAY_NAME = "CLIP Set Last Layer"
    CATEGORY = "conditioning"
    RETURNS = (Output("CLIP"),)
    clip: Clip
    stop_at_clip_layer: Annotated[int, Int(min=-24, max=-1, step=1)] = -1

    def execute(self, ctx) -> tuple:
        return (_require_clip(self.clip).clone(layer_idx=self.stop_at_clip_layer),)


class ConditioningCombine(Node):
    """Joins two conditionings into one list; the sampler runs and blends every entry."""

    DISPLAY_NAME = "Conditioning (Combine)"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning_1: Conditioning
    conditioning_2: Conditioning

    def execute(self, ctx) -> tuple:
        return (list(self.conditioning_1) + list(self.conditioning_2),)


def _first_entry(conditioning: list, node: str) -> tuple[torch.Tensor, dict]:
    if not conditioning:
        raise ValueError(f"{node}: conditioning_from is empty")
    if len(conditioning) > 1:
        log.warning("%s: conditioning_from contains more than 1 cond, only the first one is applied", node)
    return conditioning[0][0], conditioning[0][1]


def _fit_tokens(source: torch.Tensor, length: int) -> torch.Tensor:
    """`source` cut or zero-padded along the token axis to `length`."""
    source = source[:, :length]
    if source.shape[1] < length:
        pad = torch.zeros(source.shape[0], length - source.shape[1], source.shape[2], dtype=source.dtype,
                          device=source.device)
        source = torch.cat([source, pad], dim=1)
    return source


class ConditioningAverage(Node):
    """Blends conditioning_to with the first entry of conditioning_from: to·s + from·(1 − s)."""

    DISPLAY_NAME = "Conditioning (Average)"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning_to: Conditioning
    conditioning_from: Conditioning
    conditioning_to_strength: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        strength = self.conditioning_to_strength
        cond_from, extras_from = _first_entry(self.conditioning_from, "ConditioningAverage")
        pooled_from = extras_from.get("pooled_output")
        out = []
        for cond_to, extras_to in self.conditioning_to:
            blended = cond_to * strength + _fit_tokens(cond_from, cond_to.shape[1]).to(cond_to) * (1.0 - strength)
            extras = dict(extras_to)
            pooled_to = extras_to.get("pooled_output", pooled_from)
            if pooled_from is not None and pooled_to is not None:
                extras["pooled_output"] = pooled_to * strength + pooled_from * (1.0 - strength)
            elif pooled_from is not None:
                extras["pooled_output"] = pooled_from
            out.append([blended, extras])
        return (out,)


class ConditioningConcat(Node):
    """Appends the first entry of conditioning_from to every entry of conditioning_to along the token axis."""

    DISPLAY_NAME = "Conditioning (Concat)"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning_to: Conditioning
    conditioning_from: Conditioning

    def execute(self, ctx) -> tuple:
        cond_from, _ = _first_entry(self.conditioning_from, "ConditioningConcat")
        return ([[torch.cat([cond, cond_from.to(cond)], dim=1), dict(extras)]
                 for cond, extras in self.conditioning_to],)


class ConditioningZeroOut(Node):
    """Replaces the embeddings and pooled outputs with zeros (an 'empty' conditioning for some models)."""

    CATEGORY = "advanced/conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning: Conditioning

    def execute(self, ctx) -> tuple:
        out = []
        for cond, extras in self.conditioning:
            extras = dict(extras)
            if extras.get("pooled_output") is not None:
                extras["pooled_output"] = torch.zeros_like(extras["pooled_output"])
            out.append([torch.zeros_like(cond), extras])
        return (out,)


class ConditioningSetArea(Node):
    """Limits the conditioning to a rectangle (pixels; stored in latent units as `area` = (h, w, y, x))."""

    DISPLAY_NAME = "Conditioning (Set Area)"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning: Conditioning
    width: Annotated[int, Int(min=64, max=MAX_RESOLUTION, step=8)] = 64
    height: Annotated[int, Int(min=64, max=MAX_RESOLUTION, step=8)] = 64
    x: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    y: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 0
    strength: Annotated[float, Float(min=0.0, max=10.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        area = (self.height // 8, self.width // 8, self.y // 8, self.x // 8)
        return (with_values(self.conditioning, {"area": area, "strength": self.strength,
                                                "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage(Node):
    """Limits the conditioning to a rectangle given as fractions of the image size."""

    DISPLAY_NAME = "Conditioning (Set Area with Percentage)"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning: Conditioning
    width: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0
    height: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0
    x: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.0
    y: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.0
    strength: Annotated[float, Float(min=0.0, max=10.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        area = ("percentage", self.height, self.width, self.y, self.x)
        return (with_values(self.conditioning, {"area": area, "strength": self.strength,
                                                "set_area_to_bounds": False}),)


class ConditioningSetAreaStrength(Node):
    """Sets the blending strength of an area conditioning."""

    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning: Conditioning
    strength: Annotated[float, Float(min=0.0, max=10.0, step=0.01)] = 1.0

    def execute(self, ctx) -> tuple:
        return (with_values(self.conditioning, {"strength": self.strength}),)


class ConditioningSetMask(Node):
    """Limits the conditioning to a mask; "mask bounds" also crops the model pass to the mask's bounding box."""

    DISPLAY_NAME = "Conditioning (Set Mask)"
    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning: Conditioning
    mask: Mask
    strength: Annotated[float, Float(min=0.0, max=10.0, step=0.01)] = 1.0
    set_cond_area: Annotated[str, Combo(["default", "mask bounds"])]

    def execute(self, ctx) -> tuple:
        mask = self.mask if self.mask.ndim >= 3 else self.mask.unsqueeze(0)
        return (with_values(self.conditioning, {"mask": mask, "set_area_to_bounds": self.set_cond_area != "default",
                                                "mask_strength": self.strength}),)


class ConditioningSetTimestepRange(Node):
    """Applies the conditioning only between two fractions of the sampling schedule."""

    CATEGORY = "advanced/conditioning"
    RETURNS = (Output("CONDITIONING"),)
    conditioning: Conditioning
    start: Annotated[float, Float(min=0.0, max=1.0, step=0.001)] = 0.0
    end: Annotated[float, Float(min=0.0, max=1.0, step=0.001)] = 1.0

    def execute(self, ctx) -> tuple:
        return (with_values(self.conditioning, {"start_percent": self.start, "end_percent": self.end}),)


Size = Annotated[int, Int(min=0, max=MAX_RESOLUTION)]


def _pad_to_same_windows(tokens: dict, empty: dict) -> dict:
    """Appends empty-prompt windows to the shorter of the "l"/"g" token lists so both have as many windows."""
    tokens = {key: list(windows) for key, windows in tokens.items()}
    while len(tokens["l"]) < len(tokens["g"]):
        tokens["l"] += empty["l"]
    while len(tokens["g"]) < len(tokens["l"]):
        tokens["g"] += empty["g"]
    return tokens


class CLIPTextEncodeSDXL(Node):
    """SDXL prompt encoding with separate CLIP-G / CLIP-L texts and explicit size micro-conditioning."""

    CATEGORY = "advanced/conditioning"
    RETURNS = (Output("CONDITIONING"),)
    clip: Clip
    width: Size = 1024
    height: Size = 1024
    crop_w: Size = 0
    crop_h: Size = 0
    target_width: Size = 1024
    target_height: Size = 1024
    text_g: PromptText
    text_l: PromptText

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.text_encode(inputs.get("text_g"), inputs.get("text_l"))

    def execute(self, ctx) -> tuple:
        clip = _require_clip(self.clip)
        tokens = clip.tokenize(self.text_g, ctx.progress)
        if "l" in tokens:
            tokens["l"] = clip.tokenize(self.text_l, ctx.progress)["l"]
        if "l" in tokens and "g" in tokens and len(tokens["l"]) != len(tokens["g"]):
            tokens = _pad_to_same_windows(tokens, clip.tokenize(""))
        cond, pooled = clip.encode_tokens(tokens, ctx.progress)
        extras = {"pooled_output": pooled, "width": self.width, "height": self.height, "crop_w": self.crop_w,
                  "crop_h": self.crop_h, "target_width": self.target_width, "target_height": self.target_height}
        return ([[cond, extras]],)


class CLIPTextEncodeSDXLRefiner(Node):
    """SDXL refiner prompt encoding with aesthetic score and size micro-conditioning."""

    CATEGORY = "advanced/conditioning"
    RETURNS = (Output("CONDITIONING"),)
    ascore: Annotated[float, Float(min=0.0, max=1000.0, step=0.01)] = 6.0
    width: Size = 1024
    height: Size = 1024
    text: PromptText
    clip: Clip

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.text_encode(inputs.get("text"))

    def execute(self, ctx) -> tuple:
        conditioning = _require_clip(self.clip).encode_conditioning(
            self.text, progress=ctx.progress, aesthetic_score=self.ascore, width=self.width, height=self.height)
        return (conditioning,)


NODE_CLASSES = [
    CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine, ConditioningAverage, ConditioningConcat,
    ConditioningZeroOut, ConditioningSetArea, ConditioningSetAreaPercentage, ConditioningSetAreaStrength,
    ConditioningSetMask, ConditioningSetTimestepRange, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner,
]
