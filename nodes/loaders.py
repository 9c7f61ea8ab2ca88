"""Model loader nodes: checkpoints, VAEs, text encoders and diffusion models from the models folders.

Files are resolved through `services.folders` and loaded through `services.manager`, which keeps loaded modules
between prompts; the node outputs are light handles holding manager references to those modules (`manager.ref`),
not the modules: cheap to cache, and an evicted model is reloaded when a cached handle is used again."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import yaml

from graphengine import Combo, Interrupted, Node, Output

from . import costs
from .handles import UNetModel, VaeModel
from .pixel_model import NoVae, load_pixel_handle
from .services import ModelFiles

# Family base -> the CLIP encoding scheme of nodes.clip.ClipModel, and the latent space used for previews.
CLIP_FAMILY = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl", "sdxl_refiner": "sdxl_refiner", "custom": "custom"}
LATENT_SPACE = {"sd1": "sd1", "sd2": "sd1", "sdxl": "sdxl", "sdxl_refiner": "sdxl"}
PREDICTION = {"epsilon": "eps", "v_prediction": "v"}
CLIP_TYPES = ["stable_diffusion"]
UNET_WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


class ModelLoadError(Exception):
    """A model file could not be loaded; the message names the file."""


def _named(name: str, exc: Exception) -> ModelLoadError:
    message = str(exc) or type(exc).__name__
    return ModelLoadError(message if name in message else f"{name}: {message}")


@contextlib.contextmanager
def loading(name: str) -> Iterator[None]:
    """Report any failure while resolving or loading `name` as a ModelLoadError naming the file."""
    try:
        yield
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the user needs to know which file
        raise _named(name, exc) from exc


# -- handles from loaded parts -------------------------------------------------------------------------------------

def _source(module: Any, manager: Any) -> Any:
    """What a handle holds: the manager's reference to a module it loaded, else the module."""
    return manager.ref(module) if manager is not None else module


def vae_handle(vae: Any, manager: Any) -> VaeModel | None:
    return None if vae is None else VaeModel(_source(vae, manager), manager)


def model_handle(loaded: Any, manager: Any, preview_vae: VaeModel | None = None) -> UNetModel | None:
    """MODEL from a LoadedCheckpoint; custom-family latents are previewed by decoding with the checkpoint's VAE."""
    if loaded.unet is None:
        return None
    family = loaded.family
    latent_space = LATENT_SPACE.get(family.base, "custom")
    handle = UNetModel.build(_source(loaded.unet, manager), prediction=PREDICTION[loaded.prediction_type],
                             latent_scale_factor=loaded.latent_scale_factor, family=family.name,
                             latent_space=latent_space, manager=manager,
                             preview_vae=preview_vae if latent_space == "custom" else None,
                             zsnr=getattr(loaded.detection, "zsnr", False))
    handle = dataclasses.replace(handle, scheduler_config=dict(loaded.scheduler_config or {}) or None)
    if family.variant == "unclip":
        from .unclip import load_noise_augmentor

        adm_channels = int(loaded.unet.config.projection_class_embeddings_input_dim)
        handle = dataclasses.replace(handle, unclip=load_noise_augmentor(loaded.path, adm_channels))
    return handle


def clip_handle(text_encoders: list, family_base: str, services: Any) -> Any:
    """CLIP (nodes.clip.ClipModel) from loaded TextEncoders, or None when the file has none."""
    if not text_encoders:
        return None
    from .clip import ClipModel

    manager = services.manager
    return ClipModel([_source(te.model, manager) for te in text_encoders], [te.tokenizer for te in text_encoders],
                     CLIP_FAMILY.get(family_base, "custom"), embedding_dirs=tuple(services.folders.paths("embeddings")),
                     manager=manager)


def checkpoint_outputs(ctx: Any, loaded: Any) -> tuple:
    services = ctx.services
    vae = vae_handle(loaded.vae, services.manager)
    model = model_handle(loaded, services.manager, vae)
    clip = clip_handle(loaded.text_encoders, loaded.family.base, services)
    return model, clip, vae


def load_checkpoint_outputs(ctx: Any, path: Path, name: str) -> tuple:
    """(MODEL, CLIP, VAE) of a checkpoint file or diffusers folder. A pixel-space model (nodes.pixel_model) has
    neither text encoder nor VAE: CLIP is None (failing as ComfyUI's does) and the VAE a stand-in that says why."""
    services = ctx.services
    pixel = load_pixel_handle(services, path, name)
    if pixel is not None:
        return pixel, None, NoVae(name)
    return checkpoint_outputs(ctx, services.manager.load_checkpoint(path, interrupt=ctx.check_cancelled))


def prediction_from_config(path: Path) -> str | None:
    """An LDM yaml's `parameterization: "v"` (SD2-768-v configs) -> "v_prediction"; else None."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    params = (data.get("model") or {}).get("params") or {}
    return "v_prediction" if params.get("parameterization") == "v" else None


# -- nodes -----------------------------------------------------------------------------------------------------------

CHECKPOINT_RETURNS = (
    Output("MODEL", tooltip="The model used for denoising latents."),
    Output("CLIP", tooltip="The CLIP model used for encoding text prompts."),
    Output("VAE", tooltip="The VAE model used for encoding and decoding images to and from latent space."),
)


class CheckpointLoaderSimple(Node):
    """Loads a diffusion model checkpoint with its text encoder(s) and VAE."""

    DISPLAY_NAME = "Load Checkpoint"
    CATEGORY = "loaders"
    RETURNS = CHECKPOINT_RETURNS

    ckpt_name: Annotated[str, Combo(ModelFiles("checkpoints"),
                                    tooltip="The name of the checkpoint (model) to load.")]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "checkpoints", inputs.get("ckpt_name"), 3)

    def execute(self, ctx) -> tuple:
        with loading(self.ckpt_name):
            return load_checkpoint_outputs(ctx, ctx.services.folders.resolve("checkpoints", self.ckpt_name),
                                           self.ckpt_name)


class CheckpointLoader(Node):
    """Loads a checkpoint using an LDM config file (its `parameterization` picks v-prediction)."""

    DISPLAY_NAME = "Load Checkpoint With Config (DEPRECATED)"
    CATEGORY = "advanced/loaders"
    DEPRECATED = True
    RETURNS = (Output("MODEL"), Output("CLIP"), Output("VAE"))

    config_name: Annotated[str, Combo(ModelFiles("configs"))]
    ckpt_name: Annotated[str, Combo(ModelFiles("checkpoints"))]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "checkpoints", inputs.get("ckpt_name"), 3)

    def execute(self, ctx) -> tuple:
        services = ctx.services
        with loading(self.config_name):
            prediction = prediction_from_config(services.folders.resolve("configs", self.config_name))
        with loading(self.ckpt_name):
            path = services.folders.resolve("checkpoints", self.ckpt_name)
            loaded = services.manager.load_checkpoint(path, prediction_type=prediction, interrupt=ctx.check_cancelled)
        return checkpoint_outputs(ctx, loaded)


class VAELoader(Node):
    """Loads a VAE on its own (to replace a checkpoint's VAE)."""

    DISPLAY_NAME = "Load VAE"
    CATEGORY = "loaders"
    RETURNS = (Output("VAE"),)

    vae_name: Annotated[str, Combo(ModelFiles("vae"))]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "vae", inputs.get("vae_name"), 1)

    def execute(self, ctx) -> tuple:
        services = ctx.services
        with loading(self.vae_name):
            vae = services.manager.load_vae(services.folders.resolve("vae", self.vae_name))
        return (vae_handle(vae, services.manager),)


class CLIPLoader(Node):
    """Loads a text encoder on its own (SD1.x CLIP-L or SD2.x OpenCLIP-H, detected from the file)."""

    DISPLAY_NAME = "Load CLIP"
    CATEGORY = "advanced/loaders"
    RETURNS = (Output("CLIP"),)

    clip_name: Annotated[str, Combo(ModelFiles("text_encoders"))]
    type: Annotated[str, Combo(CLIP_TYPES)]
    device: Annotated[str, Combo(["default", "cpu"], optional=True, advanced=True)] = "default"

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "text_encoders", inputs.get("clip_name"), 1)

    def execute(self, ctx) -> tuple:
        services = ctx.services
        with loading(self.clip_name):
            encoder = services.manager.load_text_encoder(services.folders.resolve("text_encoders", self.clip_name))
        base = {"clip_l": "sd1", "open_clip_h": "sd2", "open_clip_g": "sdxl_refiner"}.get(encoder.kind, "custom")
        return (clip_handle([encoder], base, ctx.services),)


class UNETLoader(Node):
    """Loads a diffusion model (UNet) on its own, from models/diffusion_models (or models/unet)."""

    DISPLAY_NAME = "Load Diffusion Model"
    CATEGORY = "advanced/loaders"
    RETURNS = (Output("MODEL"),)

    unet_name: Annotated[str, Combo(ModelFiles("diffusion_models"))]
    weight_dtype: Annotated[str, Combo(UNET_WEIGHT_DTYPES)]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "diffusion_models", inputs.get("unet_name"), 1)

    def execute(self, ctx) -> tuple:
        # fp8 storage needs fp8-aware layers that diffusers' UNet lacks; those choices load at the manager's
        # compute precision (fp16/bf16 on GPU), which only costs memory, not correctness.
        services = ctx.services
        with loading(self.unet_name):
            path = services.folders.resolve("diffusion_models", self.unet_name)
            pixel = load_pixel_handle(services, path, self.unet_name)
            if pixel is not None:
                return (pixel,)
            loaded = services.manager.load_unet(path)
        return (model_handle(loaded, services.manager),)


NODE_CLASSES = [CheckpointLoaderSimple, CheckpointLoader, VAELoader, CLIPLoader, UNETLoader]
