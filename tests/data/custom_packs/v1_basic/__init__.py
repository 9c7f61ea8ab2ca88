"""A ComfyUI V1 pack written the standard way: an image node, a text node and a custom type."""

import torch


class ImageBrightness:
    """Scales an image's brightness."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image to change."}),
                "factor": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05, "display": "slider"}),
                "channel": (["all", "red", "green", "blue"],),
            },
            "optional": {"clamp": ("BOOLEAN", {"default": True, "label_on": "clamp", "label_off": "raw"})},
        }

    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("image", "mean")
    OUTPUT_TOOLTIPS = ("The brightened image.", "Its mean value.")
    FUNCTION = "brighten"
    CATEGORY = "image/adjust"
    DESCRIPTION = "Multiplies pixel values by a factor."
    SEARCH_ALIASES = ["brightness", "exposure"]

    def brighten(self, image, factor, channel, clamp=True):
        out = image.clone()
        if channel == "all":
            out = out * factor
        else:
            index = ["red", "green", "blue"].index(channel)
            out[..., index] = out[..., index] * factor
        if clamp:
            out = out.clamp(0.0, 1.0)
        return (out, float(out.mean()))


class SolidImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 8, "min": 1, "max": 256}),
                             "height": ("INT", {"default": 8, "min": 1, "max": 256}),
                             "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "image"

    def make(self, width, height, value):
        return (torch.full((1, height, width, 3), value),)


class DescribeNode:
    """Tells what it was given, hidden inputs included, as UI text and a custom-typed output."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "default": "hello"}),
                             "anything": ("*",)},
                "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ("NOTE",)
    FUNCTION = "describe"
    OUTPUT_NODE = True
    CATEGORY = "utils"
    DEPRECATED = True
    EXPERIMENTAL = True
    NOT_IDEMPOTENT = True

    def describe(self, text, anything, prompt=None, unique_id=None, extra_pnginfo=None):
        shape = list(anything.shape) if hasattr(anything, "shape") else type(anything).__name__
        line = f"{text} | node {unique_id} | {len(prompt)} nodes | shape {shape} | {extra_pnginfo}"
        return {"ui": {"text": (line,)}, "result": ({"line": line},)}


NODE_CLASS_MAPPINGS = {"ImageBrightness": ImageBrightness, "SolidImage": SolidImage, "DescribeNode": DescribeNode}
NODE_DISPLAY_NAME_MAPPINGS = {"ImageBrightness": "Image Brightness (pack)"}
