"""The ControlNet nodes (ComfyUI's class names and inputs): loaders, the apply nodes and SetUnionControlNetType."""

from __future__ import annotations

from typing import Annotated, Any

import torch

from graphengine import Combo, Float, Node, Output, Socket

from .. import costs
from ..loaders import loading
from ..services import ModelFiles
from ..types import Conditioning, Image, Model, OptionalVae
from .control import ControlLink, ControlNetHandle
from .load import UnetWeights, load_control_model

ControlNet = Annotated[Any, Socket("CONTROL_NET")]
ControlNetName = Annotated[str, Combo(ModelFiles("controlnet"))]
Strength = Annotated[float, Float(min=0.0, max=10.0, step=0.01)]
Percent = Annotated[float, Float(min=0.0, max=1.0, step=0.001)]
# ComfyUI's union ControlNet (ControlNet++) control types and their indices.
UNION_TYPES = {"auto": None, "openpose": 0, "depth": 1, "hed/pidi/scribble/ted": 2,
               "canny/lineart/anime_lineart/mlsd": 3, "normal": 4, "segment": 5, "tile": 6, "repaint": 7}


def _load_dtype(manager: Any) -> torch.dtype | None:
    # CPU: build in float32; CUDA: keep the file's dtype, the manager casts once when it caches the module
    return torch.float32 if manager.device.type == "cpu" else None


def load_handle(ctx: Any, name: str, model: Any = None) -> ControlNetHandle:
    """CONTROL_NET for a file of the controlnet folder through the model manager; `model` makes diff ControlNets
    whole (its patched weights are read when the module is loaded, and again if the manager reloads it)."""
    manager = ctx.services.manager
    with loading(name):
        path = ctx.services.folders.resolve("controlnet", name)
        if model is None:
            module = manager.get(("controlnet", str(path)), lambda: load_control_model(path, _load_dtype(manager)),
                                 "controlnet")
        else:
            def load_diff() -> torch.nn.Module:
                with model.patched() as unet:
                    return load_control_model(path, _load_dtype(manager), UnetWeights(unet))
            module = manager.get(("controlnet", str(path), "diff", model), load_diff, "controlnet")
    handle = ControlNetHandle(manager.ref(module), name, manager)
    if model is not None:
        handle.check_model(model)
    return handle


class ControlNetLoader(Node):
    """Loads a ControlNet or T2I-Adapter (original single file, diffusers file or folder) from models/controlnet."""

    DISPLAY_NAME = "Load ControlNet Model"
    CATEGORY = "loaders"
    RETURNS = (Output("CONTROL_NET"),)

    control_net_name: ControlNetName

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "controlnet", inputs.get("control_net_name"), 1)

    def execute(self, ctx) -> tuple:
        return (load_handle(ctx, self.control_net_name),)


class DiffControlNetLoader(Node):
    """Loads a diff ControlNet (weights stored relative to a model) made whole with the given model's weights."""

    DISPLAY_NAME = "Load ControlNet Model (diff)"
    CATEGORY = "loaders"
    RETURNS = (Output("CONTROL_NET"),)

    model: Model
    control_net_name: ControlNetName

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "controlnet", inputs.get("control_net_name"), 1)

    def execute(self, ctx) -> tuple:
        return (load_handle(ctx, self.control_net_name, self.model),)


def _hint(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(-1, 1).to(torch.float32)


class ControlNetApply(Node):
    """Applies a ControlNet to a conditioning (and, through it, to the negative prompt too): the old node."""

    DISPLAY_NAME = "Apply ControlNet (OLD)"
    CATEGORY = "conditioning/controlnet"
    DEPRECATED = True
    RETURNS = (Output("CONDITIONING"),)

    conditioning: Conditioning
    control_net: ControlNet
    image: Image
    strength: Strength = 1.0

    def execute(self, ctx) -> tuple:
        if self.strength == 0:
            return (self.conditioning,)
        hint = _hint(self.image)
        out = []
        for cond, options in self.conditioning:
            link = ControlLink(self.control_net, hint, self.strength, previous=options.get("control"))
            out.append([cond, {**options, "control": link, "control_apply_to_uncond": True}])
        return (out,)


class ControlNetApplyAdvanced(Node):
    """Applies a ControlNet to the positive and negative conditioning for the steps between start and end percent."""

    DISPLAY_NAME = "Apply ControlNet"
    CATEGORY = "conditioning/controlnet"
    RETURNS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    positive: Conditioning
    negative: Conditioning
    control_net: ControlNet
    image: Image
    strength: Strength = 1.0
    start_percent: Percent = 0.0
    end_percent: Percent = 1.0
    vae: OptionalVae = None  # only ControlNets with latent hints use it; the SD1.x/SD2.x/SDXL ones take pixels

    def execute(self, ctx) -> tuple:
        if self.strength == 0:
            return self.positive, self.negative
        hint = _hint(self.image)
        links: dict[int, ControlLink] = {}  # one link per earlier control, shared by positive and negative

        def applied(conditioning: list) -> list:
            out = []
            for cond, options in conditioning:
                previous = options.get("control")
                key = id(previous)
                if key not in links:
                    links[key] = ControlLink(self.control_net, hint, self.strength, self.start_percent,
                                             self.end_percent, previous)
                out.append([cond, {**options, "control": links[key], "control_apply_to_uncond": False}])
            return out

        return applied(self.positive), applied(self.negative)


class SetUnionControlNetType(Node):
    """Picks the control type of a union ControlNet ("auto" lets the model tell from the image)."""

    CATEGORY = "conditioning/controlnet"
    RETURNS = (Output("CONTROL_NET"),)

    control_net: ControlNet
    type: Annotated[str, Combo(list(UNION_TYPES))]

    def execute(self, ctx) -> tuple:
        return (self.control_net.with_union_type(UNION_TYPES[self.type]),)


NODE_CLASSES = [ControlNetLoader, DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced,
                SetUnionControlNetType]
