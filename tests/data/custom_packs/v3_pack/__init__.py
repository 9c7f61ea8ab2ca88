"""A ComfyUI V3 pack: io.ComfyNode classes returned by a ComfyExtension from comfy_entrypoint."""

import torch
from comfy_api.latest import ComfyExtension, io, ui


class Posterize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PosterizeV3",
            display_name="Posterize (V3)",
            category="image/adjust",
            description="Reduces each channel to a number of levels.",
            inputs=[
                io.Image.Input("image", tooltip="The image to posterize."),
                io.Int.Input("levels", default=4, min=2, max=256, display_mode=io.NumberDisplay.slider),
                io.Combo.Input("mode", options=["round", "floor"], default="round"),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.1, optional=True),
            ],
            outputs=[io.Image.Output(display_name="posterized"), io.Int.Output(display_name="levels")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image, levels, mode, strength=1.0):
        steps = image * (levels - 1)
        steps = torch.round(steps) if mode == "round" else torch.floor(steps)
        out = image + (steps / (levels - 1) - image) * strength
        return io.NodeOutput(out, levels, ui=ui.PreviewText(f"node {cls.hidden.unique_id}: {levels} levels"))

    @classmethod
    def validate_inputs(cls, levels, mode):
        return True if levels != 13 else "13 levels are unlucky"

    @classmethod
    def fingerprint_inputs(cls, levels, mode):
        return f"{levels}-{mode}"


class MaybeBlock(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MaybeBlockV3", category="flow",
                         inputs=[io.Image.Input("image"), io.Boolean.Input("block", default=False)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, block):
        if block:
            return io.NodeOutput(block_execution="blocked by V3 node")
        return io.NodeOutput(image)


class PickLazy(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PickLazyV3", category="flow",
                         inputs=[io.Boolean.Input("first", default=True),
                                 io.Image.Input("a", lazy=True), io.Image.Input("b", lazy=True)],
                         outputs=[io.Image.Output()])

    @classmethod
    def check_lazy_status(cls, first, a=None, b=None):
        return ["a"] if first else ["b"]

    @classmethod
    def execute(cls, first, a=None, b=None):
        return io.NodeOutput(a if first else b)


class PreviewBoth(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="PreviewBothV3", category="image", is_output_node=True,
                         inputs=[io.Image.Input("image"), io.Mask.Input("mask", optional=True)], outputs=[])

    @classmethod
    def execute(cls, image, mask=None):
        shown = image if mask is None else mask
        return io.NodeOutput(ui=ui.PreviewImage(image, cls=cls) if mask is None else ui.PreviewMask(shown, cls=cls))


class PackExtension(ComfyExtension):
    async def get_node_list(self):
        return [Posterize, MaybeBlock, PickLazy, PreviewBoth]


async def comfy_entrypoint():
    return PackExtension()
