"""The Stable Diffusion node pack: registers every node class and the shared services with a registry."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from graphengine import NodeRegistry, RuntimeConfig
from graphengine.described import register_descriptions
from graphengine.options import default_threads

from .missing_node_hints import MISSING_NODE_HINTS
from .services import Services

NODE_MODULES = ("loaders", "conditioning", "latent", "sampling", "vae", "image", "mask", "depth", "lora.nodes",
                "sampling_patches", "model_merging", "model_saving", "model_patches.freeu", "model_patches.attention",
                "model_patches.downscale", "model_patches.hypertile",
                "model_patches.hypernetwork", "model_patches.tome", "controlnet.nodes", "preprocessors",
                "upscale", "clipseg", "clip_vision", "style_model", "unclip", "gligen",
                "custom_sampling",
                "guidance_patches",
                "latent_ops", "latent_operations", "latent_composite", "latent_batch", "latent_files", "primitives",
                "loaders_more", "model_compute", "image_conditioned", "pixel_diffusion", "diffusers_sampling",
                "image_transform", "image_filters", "image_batch", "image_compose", "image_save_animated",
                )


# Every node's schema, generated from the classes by tools/make_node_schemas.py (a test checks it is fresh).
SCHEMAS_FILE = Path(__file__).with_name("node_schemas.json")


def node_classes() -> list[type]:
    classes: list[type] = []
    for name in NODE_MODULES:
        classes.extend(importlib.import_module(f"{__name__}.{name}").NODE_CLASSES)
    return classes


def register(registry: NodeRegistry, config: RuntimeConfig) -> None:
    """Entry point of the `graphengine.nodes` group."""
    if config.schemas_only and SCHEMAS_FILE.is_file():
        register_schemas(registry, config)
        return
    from .comfy_compat import register_shims

    set_threads(config.options.get("threads") or default_threads())
    registry.services = Services(config=config, preview_method=config.options.get("preview_method", "none"))
    registry.on_warm_up(registry.services.warm_up)
    registry.register_all(node_classes(), python_module="nodes")
    registry.add_missing_node_hints(MISSING_NODE_HINTS)
    register_shims(registry, registry.services)


def __getattr__(name: str) -> object:
    """ComfyUI's `nodes` names for custom node packs (NODE_CLASS_MAPPINGS, SaveImage, common_ksampler…), built on
    first use and kept (nodes.comfy_compat.core_nodes)."""
    from .comfy_compat.core_nodes import comfy_nodes_attribute

    value = comfy_nodes_attribute(name)
    globals()[name] = value
    return value


def register_schemas(registry: NodeRegistry, config: RuntimeConfig) -> None:
    """The nodes as described in SCHEMAS_FILE, without importing them (nor torch): enough to validate and convert
    workflows (model and image file combos are listed from the folders), not to run them."""
    registry.services = Services(config=config, preview_method=config.options.get("preview_method", "none"))
    register_descriptions(registry, json.loads(SCHEMAS_FILE.read_text(encoding="utf-8")))
    registry.add_missing_node_hints(MISSING_NODE_HINTS)


def set_threads(threads: int) -> None:
    """torch's intra-op and inter-op thread counts, before any work (the inter-op count can be set only once per
    process, so a second registry keeps the first one's)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or parallel work has started
        pass
