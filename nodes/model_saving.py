"""ComfyUI's save nodes: checkpoints, diffusion models, text encoders, VAEs and extracted LoRAs, as safetensors
files under the output folder (``filename_prefix`` may name subfolders; ``<name>_<counter:05>_.safetensors``).

What is written is the handle's result: its weight patches (LoRAs, merges) are applied to the live modules while
the file is written and the original weights restored after, so the cached base models stay as they were. Files
are in the original single-file layouts that the loaders read (and ComfyUI writes)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

from graphengine import Boolean, Combo, Int, Node, NodeOutput, Socket, String

from .imageio import png_text_chunks, save_target
from .types import Clip, Model, Vae

CATEGORY = "advanced/model_merging"
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}
MODELSPEC_ARCHITECTURES = {"sdxl": "stable-diffusion-xl-v1-base", "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}
HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


Prefix = Annotated[str, String()]  # may name subfolders of the output folder


def _present(value: Any, socket: str, node: str) -> Any:
    if value is None:
        raise ValueError(f"{node}: the {socket} input is empty")
    return value


def output_file(ctx: Any, prefix: str, suffix: str = ".safetensors") -> tuple[Path, str, int]:
    """A new ``<name>_<counter>_<suffix>`` path for the prefix inside the output folder (path rules of
    SaveImage), with the name and counter."""
    target = save_target(ctx.services.output_dir, prefix, 0, 0)
    counter = target.counter
    while (path := target.folder / f"{target.filename}_{counter:05}_{suffix}").exists():
        counter += 1
    return path, target.filename, counter


def file_metadata(ctx: Any, **extra: str) -> dict[str, str]:
    """The prompt and workflow (as ComfyUI stores them) plus ``extra``; none of them with --disable-metadata."""
    if ctx.services.config.options.get("disable_metadata"):
        return {}
    return {**extra, "prompt": "", **png_text_chunks(ctx.prompt or None, ctx.extra_pnginfo)}


def checkpoint_metadata(model: Any, name: str, counter: int) -> dict[str, str]:
    """ComfyUI's modelspec entries: the prediction key always, the architecture for SDXL-family models."""
    from .models.families import get_family

    prediction = getattr(model.model_sampling, "prediction", "eps")
    meta = {"modelspec.predict_key": "v" if prediction == "v" else "epsilon"}
    base = get_family(model.family).base if model.family != "custom" else "custom"
    if base in MODELSPEC_ARCHITECTURES:
        meta.update({"modelspec.architecture": MODELSPEC_ARCHITECTURES[base], "modelspec.sai_model_spec": "1.0.0",
                     "modelspec.implementation": "sgm", "modelspec.title": f"{name} {counter}"})
    return meta


def save_model_file(ctx: Any, prefix: str, model: Any, clip: Any = None, vae: Any = None) -> Path:
    """The patched model (and CLIP, VAE) as one original-layout single file."""
    from .models.single_file import save_checkpoint

    if model.family == "custom" and vae is None:
        raise ValueError("models of the custom family are saved whole: use CheckpointSave (with a CLIP and a VAE)")
    path, name, counter = output_file(ctx, prefix)
    prediction = PREDICTION_TYPES[getattr(model.model_sampling, "prediction", "eps")]
    metadata = {**checkpoint_metadata(model, name, counter), **file_metadata(ctx)}
    with contextlib.ExitStack() as stack:
        unet = stack.enter_context(model.patched())
        encoders = stack.enter_context(clip.patched()) if clip is not None else {}
        texts = [encoders[clip.slot_of(r)] for r in clip.roles] if clip is not None else []
        save_checkpoint(path, unet, vae.vae if vae is not None else None, texts, model.family, metadata=metadata,
                        prediction_type=prediction, zsnr=getattr(model.model_sampling, "zsnr", False))
    return path


class SaveNode(Node):
    """Base of the save nodes: output nodes that write a file and return nothing."""

    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    RETURNS = ()
    HIDDEN = HIDDEN


class CheckpointSave(SaveNode):
    """Saves a model, its CLIP and VAE as one checkpoint file, with every LoRA and merge baked in."""

    DISPLAY_NAME = "Save Checkpoint"

    model: Model
    clip: Clip
    vae: Vae
    filename_prefix: Prefix = "checkpoints/ComfyUI"

    def execute(self, ctx) -> NodeOutput:
        save_model_file(ctx, self.filename_prefix, _present(self.model, "MODEL", "CheckpointSave"),
                        _present(self.clip, "CLIP", "CheckpointSave"), _present(self.vae, "VAE", "CheckpointSave"))
        return NodeOutput(())


class ModelSave(SaveNode):
    """Saves a diffusion model (UNet) alone, with its weight patches baked in."""


    model: Model
    filename_prefix: Prefix = "diffusion_models/ComfyUI"

    def execute(self, ctx) -> NodeOutput:
        save_model_file(ctx, self.filename_prefix, _present(self.model, "MODEL", "ModelSave"))
        return NodeOutput(())


class CLIPSave(SaveNode):
    """Saves each text encoder of a CLIP as its own file (transformers layout), weight patches baked in."""


    clip: Clip
    filename_prefix: Prefix = "clip/ComfyUI"

    def execute(self, ctx) -> NodeOutput:
        from .models.ldm_layout import hf_clip_keys
        from .models.state_dict import write_safetensors

        clip = _present(self.clip, "CLIP", "CLIPSave")
        metadata = file_metadata(ctx, format="pt")
        with clip.patched() as encoders:
            for role in clip.roles:
                ctx.check_cancelled()
                path, _, _ = output_file(ctx, f"{self.filename_prefix}_{role.embedding_key}")
                write_safetensors(path, hf_clip_keys(encoders[clip.slot_of(role)].state_dict()), metadata)
        return NodeOutput(())


class VAESave(SaveNode):
    """Saves a VAE as a file in the original (LDM) layout."""


    vae: Vae
    filename_prefix: Prefix = "vae/ComfyUI_vae"

    def execute(self, ctx) -> NodeOutput:
        from .models.ldm_layout import vae_to_original
        from .models.state_dict import write_safetensors

        vae = _present(self.vae, "VAE", "VAESave")
        path, _, _ = output_file(ctx, self.filename_prefix)
        write_safetensors(path, vae_to_original(vae.vae.state_dict()), file_metadata(ctx))
        return NodeOutput(())


def _unet_differences(unet: Any):
    from .models.ldm_layout import unet_original_names

    names = unet_original_names(name for name, _ in unet.named_parameters())
    for name, param in unet.named_parameters():
        module, _, kind = names[name].rpartition(".")
        yield f"diffusion_model.{module}", kind, param.data


def _clip_differences(clip: Any, encoders: dict):
    from .models.ldm_layout import hf_clip_keys

    for role in clip.roles:
        params = hf_clip_keys(dict(encoders[clip.slot_of(role)].named_parameters()))
        for name, param in params.items():
            module, _, kind = name.rpartition(".")
            yield f"text_encoders.{role.embedding_key}.transformer.{module}", kind, param.data


class LoraSave(SaveNode):
    """Extracts a LoRA from model differences (e.g. ModelMergeSubtract's output) by truncated SVD per layer."""

    CATEGORY = "_for_testing"
    HIDDEN = {}

    filename_prefix: Prefix = "loras/ComfyUI_extracted_lora"
    rank: Annotated[int, Int(min=1, max=4096, step=1)] = 8
    lora_type: Annotated[str, Combo(["standard", "full_diff"])] = "standard"
    bias_diff: Annotated[bool, Boolean()] = True
    model_diff: Annotated[Any, Socket("MODEL", optional=True)] = None
    text_encoder_diff: Annotated[Any, Socket("CLIP", optional=True)] = None

    def execute(self, ctx) -> NodeOutput:
        from .lora.extract import lora_state_dict
        from .models.state_dict import write_safetensors

        if self.model_diff is None and self.text_encoder_diff is None:
            return NodeOutput(())
        path, _, _ = output_file(ctx, self.filename_prefix)
        entries: dict = {}
        with contextlib.ExitStack() as stack:
            if self.model_diff is not None:
                unet = stack.enter_context(self.model_diff.patched())
                entries.update(lora_state_dict(_unet_differences(unet), self.rank, self.lora_type,
                                               self.bias_diff, ctx.check_cancelled))
            if self.text_encoder_diff is not None:
                encoders = stack.enter_context(self.text_encoder_diff.patched())
                entries.update(lora_state_dict(_clip_differences(self.text_encoder_diff, encoders), self.rank,
                                               self.lora_type, self.bias_diff, ctx.check_cancelled))
        write_safetensors(path, entries)
        return NodeOutput(())


NODE_CLASSES = [CheckpointSave, CLIPSave, VAESave, ModelSave, LoraSave]
