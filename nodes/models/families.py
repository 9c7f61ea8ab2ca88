"""Model families: the facts the rest of the engine needs (latent scale, prediction type, text encoders),
their shipped diffusers-layout configs (``nodes/configs/<family>/``) and tokenizers. Nothing here downloads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import CLIPTokenizer

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
TOKENIZER_DIR = CONFIGS_DIR / "tokenizer"  # CLIP BPE vocab/merges, shared by every text encoder kind

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CUSTOM_CONFIG_KEY = "graphengine.config"  # safetensors metadata: JSON of the custom family's diffusers configs


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder slot of a family and how the conditioning code must read it.

    ``kind``: 'clip_l' (OpenAI CLIP, HF key layout in the file) | 'open_clip_h' (SD2) | 'open_clip_g' (SDXL G),
    the last two stored in open_clip layout. ``layer`` indexes ``hidden_states`` (-1 last, -2 penultimate);
    ``final_norm``: apply ``final_layer_norm`` to that state; ``pooled``: this encoder gives SDXL's pooled vector
    (``text_embeds`` of CLIPTextModelWithProjection).
    """

    kind: str
    prefix: str
    layout: str  # "hf" | "open_clip"
    subfolder: str  # diffusers subfolder of its config: text_encoder | text_encoder_2
    model_class: str  # CLIPTextModel | CLIPTextModelWithProjection
    tokenizer: str  # "tokenizer" (pad <|endoftext|>) | "tokenizer_openclip" (pad "!", id 0)
    layer: int = -1
    final_norm: bool = True
    pooled: bool = False


@dataclass(frozen=True)
class Family:
    name: str
    base: str  # sd1 | sd2 | sdxl | sdxl_refiner | custom
    variant: str  # normal | inpaint | depth | unclip | ip2p | refiner
    prediction_type: str  # epsilon | v_prediction
    latent_scale_factor: float
    in_channels: int
    text_encoders: tuple[TextEncoderSpec, ...]
    pipeline_class: str
    image_size: int
    head_rule: str  # how attention heads follow from channel widths: "heads_8" | "head_dim_64" | "config"

    @property
    def config_dir(self) -> Path | None:
        """Shipped diffusers-layout configs; None for the custom family (its configs travel in the file)."""
        return CONFIGS_DIR / self.name if self.name in FAMILIES else None

    @property
    def text_encoder_kinds(self) -> tuple[str, ...]:
        return tuple(spec.kind for spec in self.text_encoders)


SD1_CLIP_L = TextEncoderSpec(
    "clip_l", "cond_stage_model.transformer.", "hf", "text_encoder", "CLIPTextModel", "tokenizer"
)
# SD2 files hold all 24 open_clip blocks; SD2 conditions on the penultimate block + final norm.
SD2_CLIP_H = TextEncoderSpec(
    "open_clip_h", "cond_stage_model.model.", "open_clip", "text_encoder", "CLIPTextModel", "tokenizer_openclip",
    layer=-2,
)
SDXL_CLIP_L = TextEncoderSpec(
    "clip_l", "conditioner.embedders.0.transformer.", "hf", "text_encoder", "CLIPTextModel", "tokenizer",
    layer=-2, final_norm=False,
)
SDXL_CLIP_G = TextEncoderSpec(
    "open_clip_g", "conditioner.embedders.1.model.", "open_clip", "text_encoder_2", "CLIPTextModelWithProjection",
    "tokenizer_openclip", layer=-2, final_norm=False, pooled=True,
)
REFINER_CLIP_G = TextEncoderSpec(
    "open_clip_g", "conditioner.embedders.0.model.", "open_clip", "text_encoder_2", "CLIPTextModelWithProjection",
    "tokenizer_openclip", layer=-2, final_norm=False, pooled=True,
)

# Families that are recognised only to be refused by name (the loader and the sampler say this)
X4_UPSCALER_UNSUPPORTED = ("the SD x4 upscaler family (a 7-channel UNet: the latent plus the low-resolution image, "
                           "with a noise-level class embedding) is not supported by this engine")

SD_LATENT_SCALE = 0.18215
SDXL_LATENT_SCALE = 0.13025


SD1_TEXT, SD2_TEXT = (SD1_CLIP_L,), (SD2_CLIP_H,)
SDXL_TEXT, REFINER_TEXT = (SDXL_CLIP_L, SDXL_CLIP_G), (REFINER_CLIP_G,)
SD, XL = SD_LATENT_SCALE, SDXL_LATENT_SCALE
EPS, V = "epsilon", "v_prediction"
H8, H64 = "heads_8", "head_dim_64"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        # name, base, variant, prediction, latent scale, in_channels, text encoders, pipeline, size, head rule
        Family("sd15", "sd1", "normal", EPS, SD, 4, SD1_TEXT, "StableDiffusionPipeline", 512, H8),
        Family("sd15_inpaint", "sd1", "inpaint", EPS, SD, 9, SD1_TEXT, "StableDiffusionInpaintPipeline", 512, H8),
        Family("sd2", "sd2", "normal", EPS, SD, 4, SD2_TEXT, "StableDiffusionPipeline", 512, H64),
        Family("sd2_v", "sd2", "normal", V, SD, 4, SD2_TEXT, "StableDiffusionPipeline", 768, H64),
        Family("sd2_inpaint", "sd2", "inpaint", EPS, SD, 9, SD2_TEXT, "StableDiffusionInpaintPipeline", 512, H64),
        Family("sd2_depth", "sd2", "depth", EPS, SD, 5, SD2_TEXT, "StableDiffusionDepth2ImgPipeline", 512, H64),
        # SD2.1 unCLIP: image embeddings + their noise level enter as class labels (the LDM `label_emb`)
        Family("sd2_unclip", "sd2", "unclip", V, SD, 4, SD2_TEXT, "StableUnCLIPImg2ImgPipeline", 768, H64),
        Family("sdxl", "sdxl", "normal", EPS, XL, 4, SDXL_TEXT, "StableDiffusionXLPipeline", 1024, H64),
        Family("sdxl_inpaint", "sdxl", "inpaint", EPS, XL, 9, SDXL_TEXT, "StableDiffusionXLInpaintPipeline", 1024, H64),
        # InstructPix2Pix: the edited image's (unscaled) VAE latent enters as 4 more input channels
        Family("sd15_ip2p", "sd1", "ip2p", EPS, SD, 8, SD1_TEXT, "StableDiffusionInstructPix2PixPipeline", 512, H8),
        Family("sdxl_ip2p", "sdxl", "ip2p", EPS, XL, 8, SDXL_TEXT, "StableDiffusionXLInstructPix2PixPipeline", 1024,
               H64),
        Family("sdxl_refiner", "sdxl_refiner", "refiner", EPS, XL, 4, REFINER_TEXT, "StableDiffusionXLImg2ImgPipeline",
               1024, H64),
    )
}

# Which text-encoder slots a given set of kinds occupies in the original layout (used by the custom family).
ENCODER_LAYOUTS: dict[tuple[str, ...], tuple[TextEncoderSpec, ...]] = {
    ("clip_l",): (SD1_CLIP_L,),
    ("open_clip_h",): (SD2_CLIP_H,),
    ("clip_l", "open_clip_g"): (SDXL_CLIP_L, SDXL_CLIP_G),
    ("open_clip_g",): (REFINER_CLIP_G,),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def read_config(config_dir: Path, subfolder: str) -> dict:
    """A component config (``<dir>/<subfolder>/config.json``, or the scheduler's ``scheduler_config.json``)."""
    name = "scheduler_config.json" if subfolder == "scheduler" else "config.json"
    return json.loads((Path(config_dir) / subfolder / name).read_text(encoding="utf-8"))


def family_configs(family: Family) -> dict[str, dict]:
    """All shipped component configs of a standard family, keyed by diffusers subfolder."""
    subfolders = ["unet", "vae", "scheduler", *(spec.subfolder for spec in family.text_encoders)]
    return {sub: read_config(family.config_dir, sub) for sub in subfolders}


def load_tokenizer(variant: str = "tokenizer") -> CLIPTokenizer:
    """CLIP BPE tokenizer from ``nodes/configs/tokenizer``; ``tokenizer_openclip`` only overrides settings
    (pad token "!" = id 0, as open_clip pads), so the 1.5 MB vocab is shipped once."""
    overrides: dict = {}
    if variant != "tokenizer":
        overrides = json.loads((CONFIGS_DIR / variant / "tokenizer_config.json").read_text(encoding="utf-8"))
        overrides.pop("tokenizer_class", None)
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, **overrides)
