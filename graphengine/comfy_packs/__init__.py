"""ComfyUI custom node packs on this engine: the V1 node protocol and the V3 schema API (`comfy_api.latest`)
adapted onto the typed node contract, the modules of those APIs packs import, and what the loader needs.

Torch-free, like the rest of `graphengine`: packs get and return the values the node layer produces."""

from .adapter import DynamicPrompt
from .graph_builder import GraphBuilder
from .loader import builtin_shims, is_comfy_module, register_comfy_module, requirements, web_directory
from .v1 import adapt_v1
from .v3 import adapt_v3

__all__ = ["DynamicPrompt", "GraphBuilder", "adapt_v1", "adapt_v3", "builtin_shims", "is_comfy_module",
           "register_comfy_module", "requirements", "web_directory"]
