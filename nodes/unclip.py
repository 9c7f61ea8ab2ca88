"""unCLIP (SD2.1 unCLIP): the image-embedding noise augmentor, unCLIPCheckpointLoader and unCLIPConditioning.

An unCLIP UNet takes, besides the text, a vector `y` = [noise-augmented CLIP image embedding, embedding of the noise
level] through its class-label projection (diffusers `class_embed_type="projection"`, the LDM `label_emb`).
unCLIPConditioning only records (clip_vision_output, strength, noise_augmentation) on the conditioning entries, as
ComfyUI does; at sampling time the MODEL turns each entry's list into `y` with the sampler's seed:
- every image of every record is augmented on its own: embedding scaled by the augmentor's data mean/std, noised
  to level round(999 · noise_augmentation) of the cosine (`squaredcos_cap_v2`) schedule, unscaled, and joined
  with the sinusoidal embedding of that level (cos first); the pair is multiplied by the record's strength;
- several of them are summed, and the sum's embedding half is augmented again at level 0 (ComfyUI's merge);
- an entry without records gets zeros (so strength 0 is exactly "no image").
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from diffusers import DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from graphengine import Combo, Float, Node, Output

from . import costs
from .clip_vision import ClipVisionModel, ClipVisionOutputSocket
from .loaders import CHECKPOINT_RETURNS, checkpoint_outputs, loading
from .models.clip_vision import load_clip_vision
from .models.state_dict import read_prefixed, tensor_names
from .services import ModelFiles
from .types import Conditioning

AUGMENTOR_PREFIX = "noise_augmentor."
CLIP_VISION_PREFIX = "embedder.model."  # then OpenCLIP's visual.*
NOISE_STEPS = 1000
MERGE_NOISE_AUGMENTATION = 0.0
UNCLIP_KEY = "unclip_conditioning"  # the conditioning option ComfyUI's unCLIPConditioning writes


class NoiseAugmentor(nn.Module):
    """Noises CLIP image embeddings to a level and embeds that level (LDM's CLIPEmbeddingNoiseAugmentation)."""

    def __init__(self, dim: int, alphas_cumprod: torch.Tensor | None = None, data_mean: torch.Tensor | None = None,
                 data_std: torch.Tensor | None = None) -> None:
        super().__init__()
        if alphas_cumprod is None:
            schedule = DDPMScheduler(num_train_timesteps=NOISE_STEPS, beta_schedule="squaredcos_cap_v2")
            alphas_cumprod = schedule.alphas_cumprod
        self.dim = dim
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float32).flatten())
        self.register_buffer("data_mean", torch.zeros(1, dim) if data_mean is None else data_mean.reshape(1, dim))
        self.register_buffer("data_std", torch.ones(1, dim) if data_std is None else data_std.reshape(1, dim))

    @property
    def max_noise_level(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def level_of(self, noise_augmentation: float) -> int:
        return round((self.max_noise_level - 1) * noise_augmentation)

    def forward(self, embeds: torch.Tensor, level: int, seed: int) -> torch.Tensor:
        """[N, dim] embeddings -> [N, 2·dim]: the augmented embeddings, then the level's embedding."""
        embeds = embeds.to(torch.float32)
        noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(int(seed)))
        alpha = self.alphas_cumprod[level]
        scaled = (embeds - self.data_mean) / self.data_std
        noised = alpha.sqrt() * scaled + (1 - alpha).sqrt() * noise
        levels = torch.full((embeds.shape[0],), level, dtype=torch.float32)
        level_embedding = get_timestep_embedding(levels, self.dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([noised * self.data_std + self.data_mean, level_embedding], dim=1)

    def adm(self, records: list[dict], seed: int) -> torch.Tensor:
        """The UNet's class-label input [1, 2·dim] for one conditioning entry's unCLIP records."""
        parts = []
        for record in records:
            level = self.level_of(record["noise_augmentation"])
            for embeds in record["clip_vision_output"].image_embeds:
                parts.append(self(embeds.reshape(1, -1), level, seed) * record["strength"])
        if len(parts) == 1:
            return parts[0]
        merged = torch.stack(parts).sum(0)
        return self(merged[:, :self.dim], self.level_of(MERGE_NOISE_AUGMENTATION), seed)


def load_noise_augmentor(path: Any, adm_channels: int) -> NoiseAugmentor:
    """The checkpoint's `noise_augmentor.*` buffers (schedule, data statistics) where present, else the cosine
    schedule and unit statistics, for an UNet taking `adm_channels` = 2 · embedding width."""
    found = {k[len(AUGMENTOR_PREFIX):]: v for k, v in read_prefixed(path, AUGMENTOR_PREFIX).items()}
    return NoiseAugmentor(adm_channels // 2, found.get("alphas_cumprod"), found.get("data_mean"),
                          found.get("data_std"))


def has_clip_vision(path: Any) -> bool:
    return any(name.startswith(CLIP_VISION_PREFIX + "visual.") for name in tensor_names(path))


class unCLIPCheckpointLoader(Node):  # noqa: N801 - ComfyUI's class name
    """Loads an unCLIP checkpoint: the diffusion model, text encoder, VAE and its CLIP vision model."""

    DISPLAY_NAME = "unCLIP Checkpoint Loader"
    CATEGORY = "loaders"
    RETURNS = (*CHECKPOINT_RETURNS, Output("CLIP_VISION"))

    ckpt_name: Annotated[str, Combo(ModelFiles("checkpoints"))]

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        return costs.model_file(services, "checkpoints", inputs.get("ckpt_name"), 4)

    def execute(self, ctx) -> tuple:
        services = ctx.services
        manager = services.manager
        with loading(self.ckpt_name):
            path = services.folders.resolve("checkpoints", self.ckpt_name)
            loaded = manager.load_checkpoint(path, interrupt=ctx.check_cancelled)
            model, clip, vae = checkpoint_outputs(ctx, loaded)
            vision = None
            if has_clip_vision(path):
                ctx.check_cancelled()
                tower = manager.load_file_module(
                    "clip_vision:" + CLIP_VISION_PREFIX, path,
                    lambda p, dtype: load_clip_vision(p, dtype, CLIP_VISION_PREFIX), "clip_vision")
                vision = ClipVisionModel(manager.ref(tower), manager)
        return model, clip, vae, vision


class unCLIPConditioning(Node):  # noqa: N801 - ComfyUI's class name
    """Adds a CLIP vision image embedding (strength, noise augmentation) to the conditioning of an unCLIP model."""

    CATEGORY = "conditioning"
    RETURNS = (Output("CONDITIONING"),)

    conditioning: Conditioning
    clip_vision_output: ClipVisionOutputSocket
    strength: Annotated[float, Float(min=-10.0, max=10.0, step=0.01)] = 1.0
    noise_augmentation: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 0.0

    def execute(self, ctx) -> tuple:
        if self.strength == 0:
            return (self.conditioning,)
        record = {"clip_vision_output": self.clip_vision_output, "strength": self.strength,
                  "noise_augmentation": self.noise_augmentation}
        return ([[cond, {**extras, UNCLIP_KEY: [*extras.get(UNCLIP_KEY, []), record]}]
                 for cond, extras in self.conditioning],)


NODE_CLASSES = [unCLIPCheckpointLoader, unCLIPConditioning]
