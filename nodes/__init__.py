"""The Stable Diffusion node pack: registers every node class and the shared services with a registry."""

from __future__ import annotations

import importlib

from graphengine import NodeRegistry, RuntimeConfig

from .missing_node_hints import MISSING_NODE_HINTS
from .services import Services

NODE_MODULES = ("loaders", "conditioning", "latent", "sampling", "vae", "image", "mask", "depth", "lora.nodes",
                "sampling_patches", "model_merging", "model_saving", "model_patches.freeu", "model_patches.attention",
                "model_patches.downscale", "model_patches.hypertile")


def node_classes() -> list[type]:
    classes: list[type] = []
    for name in NODE_MODULES:
        classes.extend(importlib.import_module(f"{__name__}.{name}").NODE_CLASSES)
    return classes


def register(registry: NodeRegistry, config: RuntimeConfig) -> None:
    """Entry point of the `graphengine.nodes` group."""
    registry.services = Services(config=config, preview_method=config.options.get("preview_method", "none"))
    registry.on_warm_up(registry.services.warm_up)
    registry.register_all(node_classes(), python_module="nodes")
    registry.add_missing_node_hints(MISSING_NODE_HINTS)
