"""ComfyUI's `nodes` module names for packs (`nodes.NODE_CLASS_MAPPINGS`, `nodes.SaveImage`, `nodes.KSampler`,
`nodes.common_ksampler`, `nodes.MAX_RESOLUTION`…): V1-style classes built from this engine's node schemas, whose
FUNCTION runs the engine's node inside the node that calls it (its context: progress, interrupt, folders)."""

from __future__ import annotations

import random
import string
from typing import Any

from graphengine import NodeOutput, current_context
from graphengine.node import NodeSchema, schema_of

from ..imageio import png_text_chunks, save_images
from ..types import MAX_RESOLUTION
from . import active_services

# ComfyUI's FUNCTION names of the core nodes packs call directly (V1 classes of other nodes use "execute").
FUNCTIONS = {
    "KSampler": "sample", "KSamplerAdvanced": "sample", "CheckpointLoaderSimple": "load_checkpoint",
    "CheckpointLoader": "load_checkpoint", "CLIPTextEncode": "encode", "CLIPSetLastLayer": "set_last_layer",
    "VAEDecode": "decode", "VAEEncode": "encode", "VAEDecodeTiled": "decode", "VAEEncodeTiled": "encode",
    "VAEEncodeForInpaint": "encode", "VAELoader": "load_vae", "CLIPLoader": "load_clip", "UNETLoader": "load_unet",
    "LoraLoader": "load_lora", "LoraLoaderModelOnly": "load_lora_model_only", "EmptyLatentImage": "generate",
    "LatentUpscale": "upscale", "LatentUpscaleBy": "upscale", "LatentComposite": "composite",
    "LatentFromBatch": "frombatch", "RepeatLatentBatch": "repeat", "SetLatentNoiseMask": "set_mask",
    "LoadImage": "load_image", "LoadImageMask": "load_image", "ImageScale": "upscale", "ImageScaleBy": "upscale",
    "ImageInvert": "invert", "ImageBatch": "batch", "ImagePadForOutpaint": "expand_image", "EmptyImage": "generate",
    "ControlNetLoader": "load_controlnet", "ControlNetApply": "apply_controlnet",
    "ControlNetApplyAdvanced": "apply_controlnet", "UpscaleModelLoader": "load_model",
    "ImageUpscaleWithModel": "upscale", "ConditioningCombine": "combine", "ConditioningAverage": "addWeighted",
    "ConditioningConcat": "concat", "ConditioningSetArea": "append", "ConditioningSetMask": "append",
    "ConditioningSetTimestepRange": "set_range", "ConditioningZeroOut": "zero_out",
}
# Where a core FUNCTION's positional parameters are not in INPUT_TYPES order (the VAE comes first).
POSITIONAL = {"VAEDecode": ("vae", "samples"), "VAEEncode": ("vae", "pixels"),
              "VAEEncodeForInpaint": ("vae", "pixels", "mask", "grow_mask_by")}


def _services_or_none() -> Any:
    try:
        return active_services()
    except RuntimeError:
        return None


def input_types(schema: NodeSchema) -> dict[str, Any]:
    """ComfyUI's INPUT_TYPES dict of an engine node (combos listed from the active services' folders)."""
    services = _services_or_none()

    def entry(info: Any) -> list[Any]:
        try:
            return info.spec.object_info(info.default, services)
        except Exception:  # noqa: BLE001 - a computed combo needs services that are not here yet
            return [info.spec.type]

    out: dict[str, Any] = {"required": {n: entry(i) for n, i in schema.inputs.items() if i.required}}
    optional = {n: entry(i) for n, i in schema.inputs.items() if not i.required}
    if optional:
        out["optional"] = optional
    if schema.hidden:
        out["hidden"] = dict(schema.hidden)
    return out


def run_node(schema: NodeSchema, inputs: dict[str, Any]) -> Any:
    """Run an engine node from inside the running node: its V1-style result (a tuple, or {"ui", "result"})."""
    ctx = current_context()
    if ctx is None:
        raise RuntimeError(f"nodes.{schema.name} runs only inside a running node (it needs the prompt's context)")
    known = {k: v for k, v in inputs.items() if k in schema.inputs}
    unknown = set(inputs) - set(known) - set(schema.hidden) - {"unique_id", "prompt", "extra_pnginfo"}
    if unknown:
        raise TypeError(f"nodes.{schema.name}: unknown inputs {sorted(unknown)}; it takes {list(schema.inputs)}")
    returned = schema.cls(**known).execute(ctx)
    if isinstance(returned, NodeOutput):
        return {"ui": returned.ui, "result": returned.values} if returned.ui else returned.values
    return returned


def v1_class(schema: NodeSchema) -> type:
    """A V1-style class (INPUT_TYPES, RETURN_TYPES, FUNCTION…) whose FUNCTION runs the engine node."""
    order = list(POSITIONAL.get(schema.name, schema.inputs))

    def function(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(order):
            raise TypeError(f"nodes.{schema.name}: {len(args)} positional inputs, it takes {len(order)}")
        return run_node(schema, {**dict(zip(order, args)), **kwargs})

    name = FUNCTIONS.get(schema.name, "execute")
    return type(schema.name, (), {
        "__doc__": schema.description, "__module__": "nodes", "GRAPHENGINE_NODE": schema.cls,
        "INPUT_TYPES": classmethod(lambda cls: input_types(schema)),
        "RETURN_TYPES": tuple(o.type for o in schema.outputs),
        "RETURN_NAMES": tuple(o.display_name for o in schema.outputs),
        "OUTPUT_IS_LIST": tuple(o.is_list for o in schema.outputs), "INPUT_IS_LIST": schema.input_is_list,
        "FUNCTION": name, "CATEGORY": schema.category, "DESCRIPTION": schema.description,
        "OUTPUT_NODE": schema.output_node, name: function,
    })


def _engine_schemas() -> dict[str, NodeSchema]:
    from .. import node_classes
    return {schema.name: schema for schema in map(schema_of, node_classes())}


class SaveImage:
    """ComfyUI's SaveImage for packs to call or subclass: honours `output_dir`, `type`, `prefix_append` and
    `compress_level` set by a subclass (PreviewImage-style nodes write to the temp folder)."""

    RETURN_TYPES: tuple = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your output directory."
    __module__ = "nodes"

    def __init__(self) -> None:
        services = _services_or_none()
        self.output_dir = str(services.output_dir) if services is not None else None
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return input_types(_engine_schemas()["SaveImage"])

    def save_images(self, images: Any, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: Any = None) -> dict[str, Any]:
        services = active_services()
        ctx = current_context()
        text = {} if services.config.options.get("disable_metadata") else png_text_chunks(prompt, extra_pnginfo)
        root = self.output_dir or str(services.output_dir)
        results = save_images(images, root, filename_prefix + self.prefix_append, text, self.compress_level,
                              self.type, interrupt=ctx.check_cancelled if ctx is not None else None)
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    """ComfyUI's PreviewImage: SaveImage into the temp folder with a random name suffix."""

    DESCRIPTION = "Saves the input images to the temp directory for preview."

    def __init__(self) -> None:
        super().__init__()
        services = _services_or_none()
        self.output_dir = str(services.temp_dir) if services is not None else None
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        return input_types(_engine_schemas()["PreviewImage"])


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    positive: list, negative: list, latent: dict, denoise: float = 1.0, disable_noise: bool = False,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> tuple[dict]:
    """Sample like the KSampler node (KSamplerAdvanced when steps are bounded or noise is off); returns (LATENT,)."""
    schemas = _engine_schemas()
    common = {"model": model, "steps": steps, "cfg": cfg, "sampler_name": sampler_name, "scheduler": scheduler,
              "positive": positive, "negative": negative, "latent_image": latent}
    advanced = disable_noise or start_step is not None or last_step is not None or force_full_denoise
    if not advanced:
        return run_node(schemas["KSampler"], {**common, "seed": seed, "denoise": denoise})
    if denoise != 1.0:
        raise NotImplementedError("nodes.common_ksampler: denoise < 1 together with start/last step or "
                                  "disable_noise is not supported here")
    return run_node(schemas["KSamplerAdvanced"], {
        **common, "noise_seed": seed, "add_noise": "disable" if disable_noise else "enable",
        "start_at_step": start_step or 0, "end_at_step": 10000 if last_step is None else last_step,
        "return_with_leftover_noise": "disable" if force_full_denoise else "enable"})


def comfy_nodes_attribute(name: str) -> Any:
    """The value of `nodes.<name>` for a ComfyUI name; AttributeError for anything else."""
    if name == "MAX_RESOLUTION":
        return MAX_RESOLUTION
    if name == "common_ksampler":
        return common_ksampler
    if name in ("SaveImage", "PreviewImage"):
        return {"SaveImage": SaveImage, "PreviewImage": PreviewImage}[name]
    if name.islower() or name.startswith("_"):  # submodule names and the like: no node import for those
        raise AttributeError(f"module 'nodes' has no attribute {name!r}")
    schemas = _engine_schemas()
    if name == "NODE_CLASS_MAPPINGS":
        import nodes
        return {n: SaveImage if n == "SaveImage" else PreviewImage if n == "PreviewImage" else getattr(nodes, n)
                for n in schemas}
    if name == "NODE_DISPLAY_NAME_MAPPINGS":
        return {n: s.display_name for n, s in schemas.items()}
    if name in schemas:
        return v1_class(schemas[name])
    raise AttributeError(f"module 'nodes' has no attribute {name!r} (not a node class of this engine)")
