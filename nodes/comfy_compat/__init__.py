"""Compatibility modules for ComfyUI custom node packs: `folder_paths`, `comfy.utils`, `comfy.model_management`,
`comfy.samplers`, `comfy.sd`, `comfy.model_patcher`, `node_helpers`, `latent_preview` and `server`, built over this
engine's services and installed into `sys.modules` by the pack loader (`NodeRegistry.add_import_shim`).

Each module is made per registry by a factory closing over that registry's services; inside a running node the
running prompt's services are used instead (`active_services`), so several engines in one process stay apart."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

from graphengine import NodeRegistry, current_context


def active_services(bound: Any = None) -> Any:
    """The running node's services, else `bound`, else those of an installed `folder_paths` shim."""
    ctx = current_context()
    if ctx is not None and hasattr(ctx.services, "folders"):
        return ctx.services
    if bound is not None:
        return bound
    shim = sys.modules.get("folder_paths")
    services = getattr(shim, "__graphengine_services__", None)
    if services is None:
        raise RuntimeError("no graphengine services here: call this inside a running node, or after the engine "
                           "has installed its ComfyUI compatibility modules")
    return services


def make_module(name: str, doc: str, namespace: dict[str, Any],
                dynamic: dict[str, Callable[[], Any]] | None = None) -> types.ModuleType:
    """A module object holding `namespace`; `dynamic` attributes are computed on each access; any other missing
    attribute is an AttributeError saying the compatibility layer does not provide it."""
    module = types.ModuleType(name, doc)
    module.__dict__.update(namespace)
    computed = dict(dynamic or {})

    def __getattr__(attr: str) -> Any:
        if attr in computed:
            return computed[attr]()
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise AttributeError(f"module {name!r} has no attribute {attr!r}: graphengine's ComfyUI compatibility "
                             f"layer does not provide it (see the README, 'Compatibility modules for custom node "
                             f"packs')")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = lambda: sorted({*module.__dict__, *computed})  # type: ignore[method-assign]
    return module


def shim_factories(services: Any) -> dict[str, Callable[[], types.ModuleType]]:
    """Module name -> factory, for one registry's services."""
    from . import comfy_misc, comfy_utils, folder_paths, model_management, prompt_server

    return {
        "folder_paths": lambda: folder_paths.build(services),
        "comfy": comfy_misc.build_comfy_package,
        "comfy.utils": lambda: comfy_utils.build(services),
        "comfy.model_management": lambda: model_management.build(services),
        "comfy.samplers": comfy_misc.build_samplers,
        "execution": comfy_misc.build_execution,
        "comfy.sd": comfy_misc.build_sd,
        "comfy.model_patcher": comfy_misc.build_model_patcher,
        "node_helpers": comfy_misc.build_node_helpers,
        "latent_preview": lambda: comfy_misc.build_latent_preview(services),
        "server": lambda: prompt_server.build(),
    }


def register_shims(registry: NodeRegistry, services: Any) -> None:
    """Register every compatibility module with the registry; `server` also hooks into a server being built."""
    from . import prompt_server

    for name, factory in shim_factories(services).items():
        registry.add_import_shim(name, factory)
    registry.add_server_extension(prompt_server.attach_installed)
