"""Model files: folders, reading weights, family detection, single-file load/save, and the model manager."""

from .errors import ModelFileError, ModelNotFound, UnknownModelError, UnsafeModelPath
from .families import FAMILIES, Family, TextEncoderSpec, get_family, load_tokenizer
from .folders import ModelFolders
from .state_dict import read_state_dict
from .detect import Detection, detect_checkpoint
from .single_file import (
    LoadedCheckpoint, TextEncoder, load_checkpoint, load_diffusers_folder, load_text_encoder, load_unet, load_vae,
    save_checkpoint,
)
from .manager import ModelManager

__all__ = [
    "FAMILIES", "Detection", "Family", "LoadedCheckpoint", "ModelFileError", "ModelFolders", "ModelManager",
    "ModelNotFound", "TextEncoder", "TextEncoderSpec", "UnknownModelError", "UnsafeModelPath", "detect_checkpoint",
    "get_family", "load_checkpoint", "load_diffusers_folder", "load_text_encoder", "load_tokenizer", "load_unet",
    "load_vae", "read_state_dict", "save_checkpoint",
]
