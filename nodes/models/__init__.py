"""Model files: folders, reading weights, family detection, single-file load/save, and the model manager.

The names below load their submodule on first use, so that `nodes.models.folders` (file listings, torch-free) can
be imported by `graphengine validate` without loading torch and diffusers."""

import importlib
from typing import Any

_SUBMODULE_OF = {
    "ModelFileError": "errors", "ModelNotFound": "errors", "UnknownModelError": "errors", "UnsafeModelPath": "errors",
    "FAMILIES": "families", "Family": "families", "TextEncoderSpec": "families", "get_family": "families",
    "load_tokenizer": "families",
    "ModelFolders": "folders",
    "read_state_dict": "state_dict",
    "Detection": "detect", "detect_checkpoint": "detect",
    "LoadedCheckpoint": "single_file", "TextEncoder": "single_file", "load_checkpoint": "single_file",
    "load_diffusers_folder": "single_file", "load_text_encoder": "single_file", "load_unet": "single_file",
    "load_vae": "single_file", "save_checkpoint": "single_file",
    "ModelManager": "manager",
}

__all__ = sorted(_SUBMODULE_OF)


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE_OF.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
