"""A ComfyUI V1 pack using the protocol's control features: lazy inputs, node expansion, list inputs and outputs,
IS_CHANGED, VALIDATE_INPUTS with input_types, ExecutionBlocker, UI returns and an async function."""

import hashlib
from pathlib import Path

import torch
from comfy_execution.graph import ExecutionBlocker
from comfy_execution.graph_utils import GraphBuilder


class Scale:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "factor": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "scale"
    CATEGORY = "flow"

    def scale(self, image, factor):
        return (image * factor,)


class LazySwitch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"select": ("BOOLEAN", {"default": True}),
                             "on_true": ("*", {"lazy": True}), "on_false": ("*", {"lazy": True})}}

    RETURN_TYPES = ("*",)
    FUNCTION = "switch"
    CATEGORY = "flow"

    def check_lazy_status(self, select, on_true=None, on_false=None):
        return ["on_true"] if select else ["on_false"]

    def switch(self, select, on_true=None, on_false=None):
        return (on_true if select else on_false,)


class ScaleRepeatedly:
    """Expands into `times` chained Scale nodes."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "factor": ("FLOAT", {"default": 0.5}),
                             "times": ("INT", {"default": 2, "min": 1, "max": 8})}}

    RETURN_TYPES = ("IMAGE", "INT")
    FUNCTION = "expand"
    CATEGORY = "flow"

    def expand(self, image, factor, times):
        graph = GraphBuilder()
        current = image
        for _ in range(times):
            current = graph.node("FlowScale", image=current, factor=factor).out(0)
        return {"result": (current, times), "expand": graph.finalize()}


class SplitBatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "split"
    CATEGORY = "flow"

    def split(self, images):
        return ([images[i:i + 1] for i in range(images.shape[0])],)


class JoinList:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "label": ("STRING", {"default": "joined"})}}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "STRING")
    FUNCTION = "join"
    OUTPUT_NODE = True
    CATEGORY = "flow"

    def join(self, images, label):
        text = f"{label[0]}: {len(images)} images"
        return {"ui": {"text": [text]}, "result": (torch.cat(images, dim=0), text)}


class ReadText:
    """Reads a text file; IS_CHANGED hashes it so an edit re-runs the node."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "read"
    CATEGORY = "flow"

    @classmethod
    def IS_CHANGED(cls, path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def read(self, path):
        return (Path(path).read_text(),)


class EvenOnly:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 2, "min": 0, "max": 10}), "source": ("IMAGE",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "flow"

    @classmethod
    def VALIDATE_INPUTS(cls, value, input_types):
        if value % 2:
            return f"value must be even, got {value}"
        if input_types.get("source") not in ("IMAGE", "MASK"):
            return f"source must be an IMAGE or MASK, got {input_types.get('source')}"
        return True

    def run(self, value, source):
        return (value,)


class Gate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "open": ("BOOLEAN", {"default": True}),
                             "message": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "gate"
    CATEGORY = "flow"

    def gate(self, image, open, message):
        if open:
            return (image,)
        return (ExecutionBlocker(message or None),)


class AsyncMean:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "mean"
    CATEGORY = "flow"

    async def mean(self, image):
        return (float(image.mean()),)


class ShowValue:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "flow"

    def show(self, value):
        text = f"{float(value.mean()):.4f}" if hasattr(value, "mean") else str(value)
        return {"ui": {"text": (text,)}}


class JoinValues:
    """Joins whatever values are linked to it, under any input names (the editor adds them dynamically)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"separator": ("STRING", {"default": ","})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "join"
    CATEGORY = "flow"

    def join(self, separator, **values):
        return (separator.join(f"{name}={values[name]}" for name in sorted(values)),)


class SeededNoise:
    """Noise images from a seed (the editor gives `seed` a control-after-generate widget)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                             "size": ("INT", {"default": 4, "min": 1, "max": 64}),
                             "kind": (["uniform", "normal"],)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "noise"
    CATEGORY = "flow"

    def noise(self, seed, size, kind):
        generator = torch.Generator().manual_seed(seed)
        if kind == "uniform":
            return (torch.rand((1, size, size, 3), generator=generator),)
        return ((torch.randn((1, size, size, 3), generator=generator) * 0.2 + 0.5).clamp(0, 1),)


class CallCounter:
    """Counts its own runs on its instance, which ComfyUI keeps per node across prompts; always re-runs."""

    def __init__(self):
        self.calls = 0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "count"
    CATEGORY = "flow"

    @classmethod
    def IS_CHANGED(cls):
        return float("nan")

    def count(self):
        self.calls += 1
        return (self.calls,)


class ListPick:
    """INPUT_IS_LIST with lazy inputs: check_lazy_status gets lists too."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"use_first": ("BOOLEAN", {"default": True}),
                             "a": ("IMAGE", {"lazy": True}), "b": ("IMAGE", {"lazy": True})}}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "pick"
    CATEGORY = "flow"

    def check_lazy_status(self, use_first, a=None, b=None):
        return ["a"] if use_first[0] else ["b"]

    def pick(self, use_first, a=None, b=None):
        return (torch.cat(a if use_first[0] else b, dim=0),)


NODE_CLASS_MAPPINGS = {"ListPick": ListPick, "CallCounter": CallCounter, "SeededNoise": SeededNoise, "JoinValues": JoinValues, "FlowScale": Scale, "LazySwitch": LazySwitch, "ScaleRepeatedly": ScaleRepeatedly,
                       "SplitBatch": SplitBatch, "JoinList": JoinList, "ReadText": ReadText, "EvenOnly": EvenOnly,
                       "Gate": Gate, "AsyncMean": AsyncMean, "ShowValue": ShowValue}
