"""LoraLoader and LoraLoaderModelOnly: ComfyUI's LoRA nodes, adding a weight patch to the MODEL/CLIP handles.

The output handles share the cached base modules; the patch is data on the handle (file, strength, order) and is
applied only while the model samples or the text encoders encode (see `nodes.lora.applied`)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from graphengine import Combo, Float, Node, Output

from .. import costs
from ..loaders import loading
from ..services import ModelFiles
from ..types import Clip, Model

log = logging.getLogger("graphengine.nodes.lora")

LoraName = Annotated[str, Combo(ModelFiles("loras"), tooltip="The name of the LoRA.")]
Strength = Annotated[float, Float(min=-100.0, max=100.0, step=0.01)]


def _require(value: Any, socket: str, node: str) -> Any:
    if value is None:
        raise ValueError(f"{node}: the {socket} input is empty (the checkpoint has no {socket.lower()})")
    return value


def load_matched(ctx: Any, lora_name: str, model: Any, clip: Any, *, patch_model: bool = True) -> Any:
    """The LoRA file matched onto the model's UNet (when `patch_model`) and the CLIP's text encoders (when given);
    keys that fit nothing are logged by name."""
    from .match import load_lora  # the model machinery: imported when a LoRA is first loaded

    targets = {"unet": model.unet} if patch_model else {}
    if clip is not None:
        targets.update(clip.lora_targets())
    with loading(lora_name):
        match = load_lora(ctx.services.folders.resolve("loras", lora_name), targets, model.family)
    for key in match.unmatched:
        log.warning("lora key not loaded: %s (%s)", key, match.why.get(key, "no matching module"))
    return match


def applied(match: Any, strength: float) -> Any:
    from .applied import AppliedLora
    return AppliedLora(match, strength)


class LoraLoader(Node):
    """Applies a LoRA to the diffusion model and the CLIP text encoders, each at its own strength."""

    DISPLAY_NAME = "Load LoRA"
    CATEGORY = "loaders"
    RETURNS = (Output("MODEL", tooltip="The modified diffusion model."),
               Output("CLIP", tooltip="The modified CLIP model."))

    model: Model
    clip: Clip
    lora_name: LoraName
    strength_model: Strength = 1.0
    strength_clip: Strength = 1.0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "loras", inputs.get("lora_name"), 2)

    def execute(self, ctx) -> tuple:
        model = _require(self.model, "MODEL", "LoraLoader")
        clip = _require(self.clip, "CLIP", "LoraLoader")
        if self.strength_model == 0 and self.strength_clip == 0:
            return model, clip
        match = load_matched(ctx, self.lora_name, model, clip if self.strength_clip else None,
                             patch_model=bool(self.strength_model))
        if self.strength_model:
            model = model.with_weight_patch(applied(match, self.strength_model))
        if self.strength_clip:
            clip = clip.clone(weight_patches=(*clip.weight_patches, applied(match, self.strength_clip)))
        return model, clip


class LoraLoaderModelOnly(Node):
    """Applies a LoRA to the diffusion model only (its text-encoder keys are left out)."""

    DISPLAY_NAME = "LoraLoaderModelOnly"
    CATEGORY = "loaders"
    RETURNS = (Output("MODEL"),)

    model: Model
    lora_name: LoraName
    strength_model: Strength = 1.0

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "loras", inputs.get("lora_name"), 1)

    def execute(self, ctx) -> tuple:
        model = _require(self.model, "MODEL", "LoraLoaderModelOnly")
        if self.strength_model == 0:
            return (model,)
        match = load_matched(ctx, self.lora_name, model, None)
        return (model.with_weight_patch(applied(match, self.strength_model)),)


NODE_CLASSES = [LoraLoader, LoraLoaderModelOnly]
