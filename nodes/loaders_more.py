"""More of ComfyUI's loaders: DualCLIPLoader (SDXL's two text encoders from separate files) and DiffusersLoader
(a diffusers-format pipeline folder from models/diffusers)."""

from __future__ import annotations

from typing import Annotated

from graphengine import Combo, Node, Output

from . import costs
from .loaders import CHECKPOINT_RETURNS, clip_handle, load_checkpoint_outputs, loading
from .services import ModelFiles

# DualCLIPLoader's `type`: the pair of encoders it expects, in the family's slot order
DUAL_CLIP_TYPES = {"sdxl": ("clip_l", "open_clip_g")}


class DualCLIPLoader(Node):
    """Loads two text encoders as one CLIP (SDXL: CLIP-L and OpenCLIP-G, in either order)."""

    CATEGORY = "advanced/loaders"
    RETURNS = (Output("CLIP"),)

    clip_name1: Annotated[str, Combo(ModelFiles("text_encoders"))]
    clip_name2: Annotated[str, Combo(ModelFiles("text_encoders"))]
    type: Annotated[str, Combo(list(DUAL_CLIP_TYPES))]
    device: Annotated[str, Combo(["default", "cpu"], optional=True, advanced=True)] = "default"

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "text_encoders", inputs.get("clip_name1"), 1)

    def execute(self, ctx) -> tuple:
        services = ctx.services
        encoders = []
        for name in (self.clip_name1, self.clip_name2):
            with loading(name):
                encoders.append(services.manager.load_text_encoder(services.folders.resolve("text_encoders", name)))
        wanted = DUAL_CLIP_TYPES[self.type]
        by_kind = {encoder.kind: encoder for encoder in encoders}
        if sorted(by_kind) != sorted(wanted):
            found = ", ".join(f"{n}: {e.kind}" for n, e in zip((self.clip_name1, self.clip_name2), encoders))
            raise ValueError(f"DualCLIPLoader type {self.type!r} needs one {' and one '.join(wanted)} text "
                             f"encoder; got {found}")
        return (clip_handle([by_kind[kind] for kind in wanted], self.type, services),)


class DiffusersLoader(Node):
    """Loads a diffusers-format pipeline folder (model_index.json, unet/, vae/, text_encoder/, …)."""

    CATEGORY = "advanced/loaders/deprecated"
    RETURNS = CHECKPOINT_RETURNS
    model_path: Annotated[str, Combo(ModelFiles("diffusers"))]

    def execute(self, ctx) -> tuple:
        with loading(self.model_path):
            return load_checkpoint_outputs(ctx, ctx.services.folders.resolve("diffusers", self.model_path),
                                           self.model_path)


NODE_CLASSES = [DualCLIPLoader, DiffusersLoader]
