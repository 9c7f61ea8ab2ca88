"""The MODEL and VAE socket values: light handles over manager-held diffusers modules.

`UNetModel` implements the sampling layer's DiffusionModel protocol over a `UNet2DConditionModel` (SD1/SD2 eps
and v, 9-channel inpaint, 5-channel depth, SDXL's added `text_embeds`/`time_ids` conditioning). `VaeModel` wraps an
`AutoencoderKL`: ComfyUI's IMAGE <-> LATENT conventions, tiled encode/decode and an automatic tiled retry when a
full-size pass runs out of memory. Both run their module inside `manager.use(...)`, which puts it on the compute
device for the duration of the call. Big batches run in row chunks (and tiled passes tile by tile) with a
cancellation check between them (see `nodes.work`).

A handle holds its module through a *source*: the module itself (no manager), or a `ModelRef` from the model
manager, which hands out the cached module and reloads it after an eviction. So a cached MODEL/VAE keeps no weights
alive; `unet`/`vae` are the live module and `nbytes` is what the handle itself keeps in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .comfy_compat.handles import ComfyModelMethods, ComfyVaeMethods
from .model_compute import Compute
from .samplers.conds import repeat_to_batch
from .samplers.model_sampling import ModelSampling, ModelSamplingDiscrete
from .work import (UNET_CALL_PIXELS, VAE_CALL_PIXELS, Interrupt, Progress, cancel_checks, device_budget, map_rows,
                   row_chunks, rows_per_call, run_units)

LATENT_DOWNSCALE = 8
# SDXL micro-conditioning defaults when the conditioning does not say (ComfyUI's).
REFINER_AESTHETIC_SCORE = 6.0
REFINER_POOLED_DIM = 1280
# Tiled retry after an out-of-memory error: tile/overlap in latent pixels, halved on each further
# out-of-memory error down to MIN_FALLBACK_TILE.
FALLBACK_TILE = 64
FALLBACK_OVERLAP = 16
MIN_FALLBACK_TILE = 8
# position_net argument -> extra_conds key suffix of GLIGEN boxes
GLIGEN_INPUTS = {"boxes": "boxes", "masks": "masks", "positive_embeddings": "embeddings"}


# A module, or a reference with `.module()` (the live module, reloaded if evicted) and `.config` (e.g. ModelRef).
ModuleSource = Any


def live_module(source: ModuleSource) -> torch.nn.Module:
    return source if isinstance(source, torch.nn.Module) else source.module()


def held_bytes(source: ModuleSource) -> int:
    """Bytes a source keeps alive: a module's weights; 0 for a manager reference."""
    if not isinstance(source, torch.nn.Module):
        return 0
    from .models.manager import module_bytes
    return module_bytes(source)


@contextlib.contextmanager
def on_compute_device(manager: Any, module: ModuleSource) -> Iterator[torch.nn.Module]:
    """The module ready to run: through the model manager when there is one, else where it is."""
    module = live_module(module)
    if manager is None:
        yield module
        return
    with manager.use(module) as used:
        yield used if isinstance(used, torch.nn.Module) else module


def module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters())
    return param.device, param.dtype


def compute_device(manager: Any, module: torch.nn.Module) -> torch.device:
    """Where `module` runs: the manager's compute device, else where the module is."""
    device = getattr(manager, "device", None)
    return torch.device(device) if device is not None else module_device_dtype(module)[0]


def batch_rows(value: torch.Tensor, rows: slice, batch: int) -> torch.Tensor:
    """`value[rows]` when it has one row per batch item, else `value` (broadcast over the batch)."""
    return value[rows] if value.ndim > 0 and value.shape[0] == batch else value


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def retry_tiled(run_tiled: Callable[[int, int], torch.Tensor], tile: int = FALLBACK_TILE,
                overlap: int = FALLBACK_OVERLAP, min_tile: int = MIN_FALLBACK_TILE) -> torch.Tensor:
    """run_tiled(tile, overlap) (by default in latent pixels), the tile halved after each out-of-memory error
    until it is `min_tile`; the overlap is at most a quarter of the tile."""
    while True:
        free_device_cache()
        try:
            return run_tiled(tile, min(overlap, tile // 4))
        except Exception as exc:
            if not is_out_of_memory(exc) or tile <= min_tile:
                raise
        tile //= 2


# -- the diffusion model ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SdxlConditioning:
    """How an SDXL-style UNet takes its added conditioning: pooled width and the number of time ids."""

    pooled_dim: int
    time_ids: int  # 6 for SDXL base (sizes, crop, target), 5 for the refiner (sizes, crop, aesthetic score)


def sdxl_conditioning_of(unet: ModuleSource) -> SdxlConditioning | None:
    config = unet.config
    if getattr(config, "addition_embed_type", None) != "text_time":
        return None
    time_dim = int(config.addition_time_embed_dim)
    total = int(config.projection_class_embeddings_input_dim)
    # The refiner (2560 = 1280 pooled + 5 × 256) is the only known layout with 5 ids; everything else has 6.
    count = 5 if total - 5 * time_dim == REFINER_POOLED_DIM else 6
    return SdxlConditioning(pooled_dim=total - count * time_dim, time_ids=count)


def sdxl_time_ids(cond: dict, height: int, width: int, count: int) -> list[float]:
    """[height, width, crop_h, crop_w, target_h, target_w] (base) or [.., aesthetic score] (refiner), pixels.

    `height`/`width` are the sampled latent's size; the conditioning's own values (CLIPTextEncodeSDXL) win."""
    h = cond.get("height", height * LATENT_DOWNSCALE)
    w = cond.get("width", width * LATENT_DOWNSCALE)
    crop_h, crop_w = cond.get("crop_h", 0), cond.get("crop_w", 0)
    if count == 5:
        return [h, w, crop_h, crop_w, cond.get("aesthetic_score", REFINER_AESTHETIC_SCORE)]
    return [h, w, crop_h, crop_w, cond.get("target_height", h), cond.get("target_width", w)]


@dataclass(frozen=True, eq=False)
class UNetModel(ComfyModelMethods):
    """MODEL: a diffusers UNet2DConditionModel plus what the sampler needs to drive it.

    `latent_space` picks preview colours ("sd1" for SD1.x/SD2.x, "sdxl", anything else = decode with
    `preview_vae` when one is attached)."""

    unet_source: ModuleSource
    model_sampling: ModelSampling
    latent_scale_factor: float
    in_channels: int
    latent_space: str = "sd1"
    family: str = "sd1"
    manager: Any = None
    preview_vae: VaeModel | None = None
    sdxl: SdxlConditioning | None = field(default=None)
    latent_stats: Any = None  # samplers.latent_format.LatentStats: per-channel normalisation (Playground v2.5)
    weight_patches: tuple = ()  # nodes.lora AppliedLora / AppliedMerge, applied in order while the model runs
    # Behaviour patches of the live module (FreeU, attention scaling, …): objects with `applied(unet)`, a context
    # manager that changes this UNet instance for the block and undoes it after; applied in order, after the weights.
    module_patches: tuple = ()
    # Guidance hooks (nodes.samplers.guidance): pre-cfg / cfg / post-cfg / denoise-mask functions of a sampling run,
    # read by the sampler (`ksample`) and applied where cfg combines cond and uncond (`conds.guided_x0`).
    guidance: tuple = ()
    # unCLIP models: the image-embedding noise augmentor (nodes.unclip.NoiseAugmentor); its output enters the UNet
    # as `class_labels`.
    unclip: Any = None
    # How the UNet's forward runs (nodes.model_compute.Compute: compute dtype, torch.compile), in `apply_model` only.
    compute: Compute = field(default_factory=Compute)
    # The checkpoint's diffusers scheduler config (its training schedule), for DiffusersSchedulerSampler.
    scheduler_config: dict | None = None

    def with_weight_patch(self, patch: Any) -> UNetModel:
        """A new handle with one more weight patch (the cached base module is not touched)."""
        return dataclasses.replace(self, weight_patches=(*self.weight_patches, patch))

    def with_module_patch(self, patch: Any) -> UNetModel:
        """A new handle with one more module patch (see `module_patches`)."""
        return dataclasses.replace(self, module_patches=(*self.module_patches, patch))

    def with_guidance(self, hook: Any) -> UNetModel:
        """A new handle with one more guidance hook (see `guidance`)."""
        return dataclasses.replace(self, guidance=(*self.guidance, hook))

    def with_compute(self, **changes: Any) -> UNetModel:
        """A new handle whose UNet runs another way (see `compute`): dtype= and/or backend=."""
        return dataclasses.replace(self, compute=dataclasses.replace(self.compute, **changes))

    def with_model_sampling(self, model_sampling: Any) -> UNetModel:
        """A new handle that samples with another sigma parameterisation (ModelSamplingDiscrete & co); module
        patches that read sigmas from the UNet's timestep (`with_model_sampling`) follow the new one."""
        patches = tuple(p.with_model_sampling(model_sampling) if hasattr(p, "with_model_sampling") else p
                        for p in self.module_patches)
        return dataclasses.replace(self, model_sampling=model_sampling, module_patches=patches)

    @contextlib.contextmanager
    def patched(self) -> Iterator[torch.nn.Module]:
        """The live UNet on the compute device with this handle's weight and module patches applied for the block
        (the sampler holds this for a whole run; nested network calls reuse it)."""
        from .lora.applied import module_patches_applied, weights_patched

        with contextlib.ExitStack() as stack:
            unet = stack.enter_context(on_compute_device(self.manager, self.unet))
            stack.enter_context(weights_patched({"unet": unet}, self.weight_patches))
            stack.enter_context(module_patches_applied(unet, self.module_patches))
            yield unet

    @contextlib.contextmanager
    def patched_with(self, patch: Any) -> Iterator[torch.nn.Module]:
        """`patched()` plus one more module patch for the block only (a guidance hook's perturbed evaluation):
        network calls inside see it, the handle and its own patches are unchanged."""
        with self.patched() as unet, patch.applied(unet):
            yield unet

    @classmethod
    def build(cls, unet: ModuleSource, *, prediction: str, latent_scale_factor: float, family: str,
              latent_space: str, manager: Any = None, preview_vae: VaeModel | None = None,
              zsnr: bool = False) -> UNetModel:
        return cls(unet_source=unet, model_sampling=ModelSamplingDiscrete(prediction=prediction, zsnr=zsnr),
                   latent_scale_factor=float(latent_scale_factor), in_channels=int(unet.config.in_channels),
                   latent_space=latent_space, family=family, manager=manager, preview_vae=preview_vae,
                   sdxl=sdxl_conditioning_of(unet))

    @property
    def unet(self) -> torch.nn.Module:
        """The live UNet (reloaded by the manager if it was evicted)."""
        return live_module(self.unet_source)

    @property
    def nbytes(self) -> int:
        from .lora.applied import patches_nbytes
        return held_bytes(self.unet_source) + patches_nbytes(self.weight_patches) \
            + sum(getattr(p, "nbytes", 0) for p in self.module_patches)  # e.g. a hypernetwork's layers

    @property
    def context_dim(self) -> int:
        dim = self.unet_source.config.cross_attention_dim
        return int(dim[0] if isinstance(dim, (list, tuple)) else dim)

    def prepare_conditioning(self, conditioning: list, seed: int) -> list:
        """Per-run work on a CONDITIONING before sampling: an unCLIP model's class labels from each entry's
        unCLIP records, noised with the sampler's seed (entries are copied, never changed)."""
        if any("concat_image" in extras for _, extras in conditioning):  # SD_4XUpscale_Conditioning's
            from .models.families import X4_UPSCALER_UNSUPPORTED
            raise ValueError(f"this conditioning is for an SD x4 upscaler model, and {X4_UPSCALER_UNSUPPORTED}")
        if self.unclip is None:
            return conditioning
        return [[cond, {**extras, "unclip_adm": self.unclip_adm(extras, seed)}] for cond, extras in conditioning]

    def unclip_adm(self, cond_dict: dict, seed: int = 0) -> torch.Tensor:
        records = cond_dict.get("unclip_conditioning")
        if not records:
            return torch.zeros(1, 2 * self.unclip.dim)
        return self.unclip.adm(records, seed)

    def extra_conds(self, cond_dict: dict, batch: int, height: int, width: int) -> dict:
        extra = self._gligen_conds(cond_dict, batch, height, width)
        if self.unclip is not None:
            adm = cond_dict.get("unclip_adm")
            extra["class_labels"] = repeat_to_batch(adm if adm is not None else self.unclip_adm(cond_dict), batch)
            return extra
        if self.sdxl is None:
            return extra
        pooled = cond_dict.get("pooled_output")
        if pooled is None:
            pooled = torch.zeros(1, self.sdxl.pooled_dim)
        pooled = repeat_to_batch(pooled.reshape(-1, pooled.shape[-1]).to(torch.float32), batch)
        ids = torch.tensor(sdxl_time_ids(cond_dict, height, width, self.sdxl.time_ids), dtype=torch.float32)
        return {**extra, "text_embeds": pooled, "time_ids": ids.unsqueeze(0).repeat(batch, 1)}

    @staticmethod
    def _gligen_conds(cond_dict: dict, batch: int, height: int, width: int) -> dict:
        """GLIGEN boxes (nodes.gligen): the model to attach for the call and its position_net inputs."""
        gligen = cond_dict.get("gligen")
        if gligen is None or gligen[0] != "position":
            return {}
        return {"gligen": gligen[1], **gligen[1].unet_inputs(gligen[2], batch, height, width)}

    def apply_model(self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    concat: torch.Tensor | None = None, *, interrupt: Interrupt | None = None,
                    control: Any = None, **extra: Any) -> torch.Tensor:
        """Network output for a batch; a big batch runs in row chunks with `interrupt()` before each chunk.
        `control` (a bound ControlNet chain, `nodes.controlnet.control.ControlCall`) adds its residuals."""
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"conditioning width {context.shape[-1]} does not fit this model (expects "
                             f"{self.context_dim}): the CLIP and the MODEL come from different model families")
        x = x_in if concat is None else torch.cat([x_in, concat.to(x_in)], dim=1)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the model takes {self.in_channels} input channels, got {x.shape[1]}")
        batch = x.shape[0]
        if control is not None:
            control.check_model(self)
        gligen = extra.get("gligen")
        with self.patched() as unet, gligen.attached(unet) if gligen is not None else contextlib.nullcontext(), \
                self.compute.running(unet) as forward:
            device, dtype = module_device_dtype(unet)

            def run(rows: slice) -> torch.Tensor:
                rows_of = {k: batch_rows(v, rows, batch).to(device, dtype) for k, v in extra.items()
                           if isinstance(v, torch.Tensor)}
                class_labels = rows_of.pop("class_labels", None)
                boxes = {name: rows_of.pop(f"gligen_{key}") for name, key in GLIGEN_INPUTS.items() if gligen}
                added = rows_of if self.sdxl is not None else None
                steps = batch_rows(t, rows, batch).to(device)
                hidden = batch_rows(context, rows, batch).to(device, dtype)
                residuals = {} if control is None else \
                    control.unet_kwargs(rows, x_in[rows].to(device, dtype), steps, hidden, added, dtype)
                with torch.no_grad():
                    out = forward(x[rows].to(device, dtype), steps, encoder_hidden_states=hidden,
                               class_labels=class_labels, added_cond_kwargs=added,
                               cross_attention_kwargs={"gligen": boxes} if gligen else None, return_dict=False,
                               **residuals)[0]
                return out.to(x_in.device, torch.float32)

            per_call = rows_per_call(x.shape[-2] * x.shape[-1], device_budget(UNET_CALL_PIXELS, device))
            outs = run_units(row_chunks(batch, per_call), run, cancel_checks(interrupt) if interrupt else None)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


# -- tiling ----------------------------------------------------------------------------------------------------------

def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of `tile` covering [0, size) with at least `overlap` shared; the last ends at size."""
    if size <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, size - tile, stride))
    starts.append((size - tile) // align * align)
    return sorted(set(starts))


def feather_weights(height: int, width: int, feather: int) -> torch.Tensor:
    """[height, width] blending weights: linear ramps `feather` long at every edge, 1 inside, never 0."""
    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        return torch.minimum(torch.minimum((i + 1) / (feather + 1), (n - i) / (feather + 1)), torch.tensor(1.0))
    return ramp(height).unsqueeze(1) * ramp(width).unsqueeze(0)


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, overlap: int,
              scale: float, out_channels: int, align: int = 1, progress: Progress | None = None) -> torch.Tensor:
    """Apply a spatial map (output size = input size × scale) tile by tile, blending overlaps with ramps;
    `progress(i, tiles)` before each tile."""
    batch, _, height, width = x.shape
    out_h, out_w = round(height * scale), round(width * scale)
    total = torch.zeros(batch, out_channels, out_h, out_w)
    weight = torch.zeros(1, 1, out_h, out_w)
    tile_h, tile_w = min(tile, height), min(tile, width)
    feather = max(1, round(overlap * scale / 2))

    def add_tile(start: tuple[int, int]) -> None:
        y, x0 = start
        piece = fn(x[:, :, y:y + tile_h, x0:x0 + tile_w]).to("cpu", torch.float32)
        oy, ox = round(y * scale), round(x0 * scale)
        ph, pw = piece.shape[-2:]
        w = feather_weights(ph, pw, feather)
        total[:, :, oy:oy + ph, ox:ox + pw] += piece * w
        weight[:, :, oy:oy + ph, ox:ox + pw] += w

    starts = [(y, x0) for y in tile_starts(height, tile_h, overlap, align)
              for x0 in tile_starts(width, tile_w, overlap, align)]
    run_units(starts, add_tile, progress)
    return total / weight


# -- the VAE -----------------------------------------------------------------------------------------------------------

def crop_to_multiple(pixels: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop [B,H,W,C] so that H and W are multiples of `multiple`."""
    height, width = pixels.shape[1], pixels.shape[2]
    new_h, new_w = height // multiple * multiple, width // multiple * multiple
    if (new_h, new_w) == (height, width):
        return pixels
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image {width}x{height} is smaller than the VAE's {multiple}-pixel grid")
    top, left = (height % multiple) // 2, (width % multiple) // 2
    return pixels[:, top:top + new_h, left:left + new_w, :]


@dataclass(frozen=True, eq=False)
class VaeModel(ComfyVaeMethods):
    """VAE: IMAGE [B,H,W,C] 0..1 <-> raw LATENT [B,c,H/8,W/8] (VAE units, not multiplied by the scale factor)."""

    vae_source: ModuleSource
    manager: Any = None

    @property
    def vae(self) -> torch.nn.Module:
        """The live AutoencoderKL (reloaded by the manager if it was evicted)."""
        return live_module(self.vae_source)

    @property
    def nbytes(self) -> int:
        return held_bytes(self.vae_source)

    @property
    def latent_channels(self) -> int:
        return int(self.vae_source.config.latent_channels)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae_source.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae_source.config, "scaling_factor", 0.18215))

    # raw passes on [B,C,H,W] tensors (pixels in -1..1); run on the compute device, return float32 CPU
    def _encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        with on_compute_device(self.manager, self.vae) as vae, torch.no_grad():
            device, dtype = module_device_dtype(vae)
            posterior = vae.encode(pixels.to(device, dtype)).latent_dist
            return posterior.mean.to("cpu", torch.float32)

    def _decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        with on_compute_device(self.manager, self.vae) as vae, torch.no_grad():
            device, dtype = module_device_dtype(vae)
            return vae.decode(latent.to(device, dtype)).sample.to("cpu", torch.float32)

    def _pixels_in(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = crop_to_multiple(pixels[..., :3], self.downscale)
        return pixels.movedim(-1, 1).to(torch.float32) * 2.0 - 1.0

    @staticmethod
    def _pixels_out(decoded: torch.Tensor) -> torch.Tensor:
        return ((decoded + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous()

    def _checked_latent(self, latent: torch.Tensor) -> torch.Tensor:
        channels = latent.shape[1] if latent.ndim == 4 else None
        if channels is not None and channels != self.latent_channels:
            hint = ": it is the image of a pixel-space model (use PixelLatentToImage)" if channels == 3 else ""
            raise ValueError(f"this VAE decodes {self.latent_channels}-channel latents, got a {channels}-channel "
                             f"LATENT{hint}")
        return latent.to(torch.float32)

    def _rows_per_call(self, latent_pixels: int) -> int:
        return rows_per_call(latent_pixels, device_budget(VAE_CALL_PIXELS, compute_device(self.manager, self.vae)))

    def _encode_rows(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        try:
            return self._encode_raw(x)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        d = self.downscale
        return retry_tiled(lambda tile, overlap: self._encode_tiled_in(x, tile * d, overlap * d, progress))

    def _decode_rows(self, latent: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        try:
            return self._pixels_out(self._decode_raw(latent))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        return retry_tiled(lambda tile, overlap: self.decode_tiled(latent, tile, overlap, progress))

    def encode(self, pixels: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Posterior mean of the (centre-cropped) pixels; a big batch runs in row chunks with progress(i, n)
        before each; retries tiled on out-of-memory."""
        x = self._pixels_in(pixels)
        rows = self._rows_per_call(x.shape[-2] * x.shape[-1] // self.downscale ** 2)
        if x.shape[0] <= rows:  # one pass: an out-of-memory retry reports its tiles instead
            return self._encode_rows(x, progress)
        return map_rows(self._encode_rows, x, rows, progress)

    def decode(self, latent: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """IMAGE [B,H,W,3] 0..1 from a raw latent; a big batch runs in row chunks with progress(i, n) before
        each; retries tiled on out-of-memory."""
        latent = self._checked_latent(latent)
        rows = self._rows_per_call(latent.shape[-2] * latent.shape[-1])
        if latent.shape[0] <= rows:
            return self._decode_rows(latent, progress)
        return map_rows(self._decode_rows, latent, rows, progress)

    def _encode_tiled_in(self, x: torch.Tensor, tile: int, overlap: int,
                         progress: Progress | None = None) -> torch.Tensor:
        return tiled_map(self._encode_raw, x, tile=tile, overlap=overlap, scale=1 / self.downscale,
                         out_channels=self.latent_channels, align=self.downscale, progress=progress)

    def encode_tiled(self, pixels: torch.Tensor, tile_size: int, overlap: int,
                     progress: Progress | None = None) -> torch.Tensor:
        """Encode in pixel tiles of `tile_size` sharing `overlap` pixels; progress(i, tiles) before each tile."""
        return self._encode_tiled_in(self._pixels_in(pixels), tile_size, min(overlap, tile_size // 4), progress)

    def decode_tiled(self, latent: torch.Tensor, tile_size: int, overlap: int,
                     progress: Progress | None = None) -> torch.Tensor:
        """Decode in latent tiles of `tile_size` sharing `overlap` latent pixels; progress(i, tiles) before each."""
        decoded = tiled_map(self._decode_raw, self._checked_latent(latent), tile=tile_size,
                            overlap=min(overlap, tile_size // 4), scale=self.downscale, out_channels=3,
                            progress=progress)
        return self._pixels_out(decoded)
