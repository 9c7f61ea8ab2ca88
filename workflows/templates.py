"""Ready-made Stable Diffusion graphs as Python functions with typed parameters; each returns a `Graph`.

Defaults suit the bundled 64x64 demo model (models/checkpoints/graphengine-demo*.safetensors) and the sample
inputs in input/. Every template takes `registry=` (keyword): the registry whose schemas check the graph; without
it one is built for the current folder. `graphengine template NAME --help` lists a template's parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from graphengine import NodeRegistry, RuntimeConfig, build_registry
from graphengine.script import Graph, OutputRef

BASE_CHECKPOINT = "graphengine-demo.safetensors"
INPAINT_CHECKPOINT = "graphengine-demo-inpaint.safetensors"
DEPTH_CHECKPOINT = "graphengine-demo-depth.safetensors"
UNCOND_CHECKPOINT = "graphengine-demo-uncond.safetensors"  # pixel-space UNet2DModel + DDPMScheduler, 32x32 shapes
DEMO_LORA = "graphengine-demo-corners.safetensors"  # models/loras/: teaches the demo model shapes in the corners
DEMO_CLIPSEG = "graphengine-demo-clipseg"  # models/clipseg/: finds "the red circle" in the shapes scenes
UPSCALE_MODEL = "RealESRGAN_x2plus.pth"  # models/upscale_models/: not bundled (RealESRGAN's own 2x release file)
DEMO_CONTROLNET = "graphengine-demo-depth.safetensors"  # models/controlnet/: a depth map places the demo model's shapes
AREA_MIN = 64  # ConditioningSetArea's smallest width/height in pixels

def _graph(registry: NodeRegistry | None) -> Graph:
    return Graph(registry if registry is not None else build_registry(RuntimeConfig()))


def _prompts(g: Graph, checkpoint: str, prompt: str, negative: str) -> tuple[OutputRef, OutputRef, OutputRef,
                                                                               OutputRef, OutputRef]:
    """Checkpoint loader and the two text encodings: (model, clip, vae, positive, negative)."""
    model, clip, vae = g.CheckpointLoaderSimple(ckpt_name=checkpoint)
    positive = g.CLIPTextEncode(text=prompt, clip=clip, _title="Positive prompt")
    negative_cond = g.CLIPTextEncode(text=negative, clip=clip, _title="Negative prompt")
    return model, clip, vae, positive[0], negative_cond[0]


def _decode_and_save(g: Graph, latent: OutputRef, vae: OutputRef, filename_prefix: str) -> None:
    g.SaveImage(images=g.VAEDecode(samples=latent, vae=vae), filename_prefix=filename_prefix)


def txt2img(prompt: str, negative: str = "", width: int = 64, height: int = 64, steps: int = 20, cfg: float = 5.0,
            sampler: str = "euler", scheduler: str = "normal", seed: int = 0, batch_size: int = 1,
            checkpoint: str = BASE_CHECKPOINT, filename_prefix: str = "txt2img", *,
            registry: NodeRegistry | None = None) -> Graph:
    """Text to image: sample an empty latent guided by the prompt."""
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    latent = g.EmptyLatentImage(width=width, height=height, batch_size=batch_size)
    sampled = g.KSampler(model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                         positive=positive, negative=negative_cond, latent_image=latent, denoise=1.0)
    _decode_and_save(g, sampled[0], vae, filename_prefix)
    return g


def lora(prompt: str, lora_name: str = DEMO_LORA, strength_model: float = 1.0, strength_clip: float = 1.0,
         negative: str = "", width: int = 64, height: int = 64, steps: int = 20, cfg: float = 5.0,
         sampler: str = "euler", scheduler: str = "normal", seed: int = 0, checkpoint: str = BASE_CHECKPOINT,
         filename_prefix: str = "lora", *, registry: NodeRegistry | None = None) -> Graph:
    """Text to image with a LoRA on the model and the text encoder (the demo LoRA knows "in the top left corner")."""
    g = _graph(registry)
    model, clip, vae = g.CheckpointLoaderSimple(ckpt_name=checkpoint)
    model, clip = g.LoraLoader(model=model, clip=clip, lora_name=lora_name, strength_model=strength_model,
                               strength_clip=strength_clip)
    positive = g.CLIPTextEncode(text=prompt, clip=clip, _title="Positive prompt")
    negative_cond = g.CLIPTextEncode(text=negative, clip=clip, _title="Negative prompt")
    latent = g.EmptyLatentImage(width=width, height=height, batch_size=1)
    sampled = g.KSampler(model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                         positive=positive[0], negative=negative_cond[0], latent_image=latent, denoise=1.0)
    _decode_and_save(g, sampled[0], vae, filename_prefix)
    return g


def img2img(prompt: str, image: str = "img2img_init.png", denoise: float = 0.6, negative: str = "",
            steps: int = 20, cfg: float = 5.0, sampler: str = "euler", scheduler: str = "normal",
            seed: int = 0, checkpoint: str = BASE_CHECKPOINT, filename_prefix: str = "img2img", *,
            registry: NodeRegistry | None = None) -> Graph:
    """Image to image: encode an input image and resample it partially (lower denoise keeps more of it)."""
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    pixels = g.LoadImage(image=image).IMAGE
    latent = g.VAEEncode(pixels=pixels, vae=vae)
    sampled = g.KSampler(model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                         positive=positive, negative=negative_cond, latent_image=latent, denoise=denoise)
    _decode_and_save(g, sampled[0], vae, filename_prefix)
    return g


def inpaint(prompt: str, image: str = "inpaint_image.png", mask: str = "inpaint_mask.png", denoise: float = 1.0,
            negative: str = "", steps: int = 20, cfg: float = 5.0, sampler: str = "euler",
            scheduler: str = "normal", seed: int = 0, checkpoint: str = BASE_CHECKPOINT,
            filename_prefix: str = "inpaint", *, registry: NodeRegistry | None = None) -> Graph:
    """Inpaint with the base model: only the masked area (white in the mask image) is resampled."""
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    pixels = g.LoadImage(image=image).IMAGE
    mask_out = g.LoadImageMask(image=mask, channel="red")
    latent = g.SetLatentNoiseMask(samples=g.VAEEncode(pixels=pixels, vae=vae), mask=mask_out)
    sampled = g.KSampler(model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                         positive=positive, negative=negative_cond, latent_image=latent, denoise=denoise)
    _decode_and_save(g, sampled[0], vae, filename_prefix)
    return g


def _inpaint_model_sampling(g: Graph, model: OutputRef, vae: OutputRef, positive: OutputRef,
                            negative: OutputRef, pixels: OutputRef, mask: OutputRef, method: str,
                            grow_mask_by: int, sampling: dict) -> OutputRef:
    """KSampler of a 9-channel inpaint model, prepared by VAEEncodeForInpaint or InpaintModelConditioning."""
    if method == "conditioning":
        prepared = g.InpaintModelConditioning(positive=positive, negative=negative, vae=vae, pixels=pixels,
                                              mask=mask, noise_mask=True)
        positive, negative, latent = prepared.positive, prepared.negative, prepared.latent
    else:
        latent = g.VAEEncodeForInpaint(pixels=pixels, vae=vae, mask=mask, grow_mask_by=grow_mask_by)[0]
    return g.KSampler(model=model, positive=positive, negative=negative, latent_image=latent, denoise=1.0,
                      **sampling)[0]


def inpaint_model(prompt: str, image: str = "inpaint_image.png", mask: str = "inpaint_mask.png",
                  method: Literal["encode", "conditioning"] = "encode", grow_mask_by: int = 6, negative: str = "",
                  steps: int = 20, cfg: float = 5.0, sampler: str = "euler", scheduler: str = "normal",
                  seed: int = 0, checkpoint: str = INPAINT_CHECKPOINT, filename_prefix: str = "inpaint_model", *,
                  registry: NodeRegistry | None = None) -> Graph:
    """Inpaint with a 9-channel inpaint model; method "encode" uses VAEEncodeForInpaint, "conditioning" uses
    InpaintModelConditioning (keeps the original latent under the mask as the start point)."""
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    pixels = g.LoadImage(image=image).IMAGE
    mask_out = g.LoadImageMask(image=mask, channel="red")[0]
    sampling = dict(seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler)
    sampled = _inpaint_model_sampling(g, model, vae, positive, negative_cond, pixels, mask_out, method,
                                      grow_mask_by, sampling)
    _decode_and_save(g, sampled, vae, filename_prefix)
    return g


def clipseg_inpaint(prompt: str, text: str = "the red circle", image: str = "inpaint_image.png",
                    clipseg_model: str = DEMO_CLIPSEG, threshold: float = 0.4, blur: float = 1.0,
                    dilation_factor: int = 2, grow_mask_by: int = 6, negative: str = "", steps: int = 20,
                    cfg: float = 5.0, sampler: str = "euler", scheduler: str = "normal", seed: int = 0,
                    checkpoint: str = INPAINT_CHECKPOINT, filename_prefix: str = "clipseg_inpaint", *,
                    registry: NodeRegistry | None = None) -> Graph:
    """Inpaint what `text` names: CLIPSeg finds it (no hand-drawn mask), the 9-channel inpaint model repaints it."""
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    pixels = g.LoadImage(image=image).IMAGE
    mask = g.CLIPSeg(image=pixels, text=text, threshold=threshold, blur=blur, dilation_factor=dilation_factor,
                     use_cuda=True, every_batch=False, model_name=clipseg_model)[0]
    sampling = dict(seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler)
    sampled = _inpaint_model_sampling(g, model, vae, positive, negative_cond, pixels, mask, "encode",
                                      grow_mask_by, sampling)
    _decode_and_save(g, sampled, vae, filename_prefix)
    return g


def outpaint(prompt: str, image: str = "outpaint_image.png", left: int = 0, top: int = 0, right: int = 32,
             bottom: int = 0, feathering: int = 8, grow_mask_by: int = 4, negative: str = "", steps: int = 20,
             cfg: float = 5.0, sampler: str = "euler", scheduler: str = "normal", seed: int = 0,
             checkpoint: str = INPAINT_CHECKPOINT, filename_prefix: str = "outpaint", *,
             registry: NodeRegistry | None = None) -> Graph:
    """Outpaint: pad the image (grey) on the chosen sides and let the inpaint model fill the new area."""
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    padded = g.ImagePadForOutpaint(image=g.LoadImage(image=image).IMAGE, left=left, top=top, right=right,
                                   bottom=bottom, feathering=feathering)
    sampling = dict(seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler)
    sampled = _inpaint_model_sampling(g, model, vae, positive, negative_cond, padded.IMAGE, padded.MASK, "encode",
                                      grow_mask_by, sampling)
    _decode_and_save(g, sampled, vae, filename_prefix)
    return g


def depth2img(prompt: str, depth_image: str = "depth_map.png", init_image: str | None = None,
              denoise: float = 1.0, width: int = 64, height: int = 64, negative: str = "", steps: int = 20,
              cfg: float = 5.0, sampler: str = "euler", scheduler: str = "normal", seed: int = 0,
              checkpoint: str = DEPTH_CHECKPOINT, filename_prefix: str = "depth2img", *,
              registry: NodeRegistry | None = None) -> Graph:
    """Depth to image with a 5-channel depth model: the depth map (bright = near) fixes the layout. Starts from
    noise of width x height (the depth map's size), or from `init_image` at `denoise`."""
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    depth = g.LoadImage(image=depth_image, _title="Depth map").IMAGE
    conditioned = g.ConditioningSetDepth(positive=positive, negative=negative_cond, depth_map=depth)
    if init_image:
        latent = g.VAEEncode(pixels=g.LoadImage(image=init_image).IMAGE, vae=vae)[0]
    else:
        latent = g.EmptyLatentImage(width=width, height=height, batch_size=1)[0]
    sampled = g.KSampler(model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                         positive=conditioned.positive, negative=conditioned.negative, latent_image=latent,
                         denoise=denoise)
    _decode_and_save(g, sampled[0], vae, filename_prefix)
    return g


def _two_pass(g: Graph, checkpoint: str, prompt: str, negative: str, width: int, height: int, steps: int,
              hires_steps: int, hires_denoise: float, seed: int, sampling: dict,
              enlarge: Callable[[OutputRef, OutputRef], OutputRef], filename_prefix: str) -> Graph:
    """First pass at width x height, `enlarge(latent, vae)` -> a larger latent, the hires pass, decode and save."""
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    common = dict(model=model, positive=positive, negative=negative_cond, **sampling)
    first = g.KSampler(seed=seed, steps=steps, latent_image=g.EmptyLatentImage(width=width, height=height),
                       denoise=1.0, _title="KSampler (first pass)", **common)
    second = g.KSampler(seed=seed, steps=hires_steps, latent_image=enlarge(first[0], vae), denoise=hires_denoise,
                        _title="KSampler (hires pass)", **common)
    _decode_and_save(g, second[0], vae, filename_prefix)
    return g


def controlnet(prompt: str, control_image: str = "depth_map.png", control_net_name: str = DEMO_CONTROLNET,
               strength: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0, negative: str = "",
               width: int = 64, height: int = 64, steps: int = 20, cfg: float = 5.0, sampler: str = "euler",
               scheduler: str = "normal", seed: int = 0, checkpoint: str = BASE_CHECKPOINT,
               filename_prefix: str = "controlnet", *, registry: NodeRegistry | None = None) -> Graph:
    """Text to image steered by a depth ControlNet: the depth map (white = near) says where the shapes go and how
    they look; the prompt says their colours."""
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    depth = g.LoadImage(image=control_image, _title="Depth map").IMAGE
    control_net = g.ControlNetLoader(control_net_name=control_net_name)[0]
    controlled = g.ControlNetApplyAdvanced(positive=positive, negative=negative_cond, control_net=control_net,
                                           image=depth, strength=strength, start_percent=start_percent,
                                           end_percent=end_percent)
    latent = g.EmptyLatentImage(width=width, height=height, batch_size=1)
    sampled = g.KSampler(model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                         positive=controlled.positive, negative=controlled.negative, latent_image=latent,
                         denoise=1.0)
    _decode_and_save(g, sampled[0], vae, filename_prefix)
    return g


def hires_fix(prompt: str, negative: str = "", width: int = 64, height: int = 64, scale_by: float = 1.5,
              upscale_method: Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"] = "nearest-exact",
              hires_denoise: float = 0.5, steps: int = 20, hires_steps: int = 10, cfg: float = 5.0,
              sampler: str = "euler", scheduler: str = "normal", seed: int = 0,
              checkpoint: str = BASE_CHECKPOINT, filename_prefix: str = "hires_fix", *,
              registry: NodeRegistry | None = None) -> Graph:
    """Two-pass generation: sample at width x height, upscale the latent by `scale_by`, then resample it at
    `hires_denoise` to add detail at the larger size."""
    g = _graph(registry)

    def enlarge(latent: OutputRef, _vae: OutputRef) -> OutputRef:
        return g.LatentUpscaleBy(samples=latent, upscale_method=upscale_method, scale_by=scale_by)[0]

    sampling = dict(cfg=cfg, sampler_name=sampler, scheduler=scheduler)
    return _two_pass(g, checkpoint, prompt, negative, width, height, steps, hires_steps, hires_denoise, seed,
                     sampling, enlarge, filename_prefix)


def hires_fix_model(prompt: str, negative: str = "", width: int = 64, height: int = 64,
                    upscale_model: str = UPSCALE_MODEL, megapixels: float | None = None,
                    hires_denoise: float = 0.5, steps: int = 20, hires_steps: int = 10, cfg: float = 5.0,
                    sampler: str = "euler", scheduler: str = "normal", seed: int = 0,
                    checkpoint: str = BASE_CHECKPOINT, filename_prefix: str = "hires_fix_model", *,
                    registry: NodeRegistry | None = None) -> Graph:
    """Two-pass generation with an upscale model: sample at width x height, decode, upscale the pixels with
    `upscale_model` (from models/upscale_models; optionally resized to `megapixels`), re-encode and resample at
    `hires_denoise`."""
    g = _graph(registry)

    def enlarge(latent: OutputRef, vae: OutputRef) -> OutputRef:
        upscaler = g.UpscaleModelLoader(model_name=upscale_model)
        pixels = g.ImageUpscaleWithModel(upscale_model=upscaler, image=g.VAEDecode(samples=latent, vae=vae))[0]
        if megapixels is not None:
            pixels = g.ImageScaleToTotalPixels(image=pixels, upscale_method="lanczos", megapixels=megapixels,
                                               resolution_steps=8)[0]
        return g.VAEEncode(pixels=pixels, vae=vae)[0]

    sampling = dict(cfg=cfg, sampler_name=sampler, scheduler=scheduler)
    return _two_pass(g, checkpoint, prompt, negative, width, height, steps, hires_steps, hires_denoise, seed,
                     sampling, enlarge, filename_prefix)


def variations(prompt: str, count: int = 4, mode: Literal["batch", "seeds"] = "batch", negative: str = "",
               width: int = 64, height: int = 64, steps: int = 20, cfg: float = 5.0, sampler: str = "euler",
               scheduler: str = "normal", seed: int = 0, checkpoint: str = BASE_CHECKPOINT,
               filename_prefix: str = "variations", *, registry: NodeRegistry | None = None) -> Graph:
    """Several images of one prompt: one batch of `count` latents ("batch"), or `count` samplers with seeds
    seed, seed+1, … sharing the loaded model and prompts ("seeds")."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    g = _graph(registry)
    model, _clip, vae, positive, negative_cond = _prompts(g, checkpoint, prompt, negative)
    common = dict(model=model, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler, positive=positive,
                  negative=negative_cond, denoise=1.0)
    if mode == "batch":
        latent = g.EmptyLatentImage(width=width, height=height, batch_size=count)
        _decode_and_save(g, g.KSampler(seed=seed, latent_image=latent, **common)[0], vae, filename_prefix)
        return g
    latent = g.EmptyLatentImage(width=width, height=height, batch_size=1)
    for index in range(count):
        sampled = g.KSampler(seed=seed + index, latent_image=latent, _title=f"KSampler (seed {seed + index})",
                             **common)
        _decode_and_save(g, sampled[0], vae, f"{filename_prefix}_seed{seed + index}")
    return g


def area_composition(prompt: str, regions: list[str], negative: str = "", width: int = 128, height: int = 64,
                     region_strength: float = 1.0, steps: int = 20, cfg: float = 5.0, sampler: str = "euler",
                     scheduler: str = "normal", seed: int = 0, checkpoint: str = BASE_CHECKPOINT,
                     filename_prefix: str = "area_composition", *, registry: NodeRegistry | None = None) -> Graph:
    """Regional prompting: the image is split into equal columns, left to right, one per entry of `regions`; each
    column is guided by its own prompt (ConditioningSetArea), combined with the whole-image `prompt`."""
    if not regions:
        raise ValueError("regions needs at least one prompt")
    column = (width // len(regions)) // 8 * 8
    if column < AREA_MIN:
        raise ValueError(f"{len(regions)} regions in width {width} give {column}-px columns; areas are at least "
                         f"{AREA_MIN} px wide, so make width at least {AREA_MIN * len(regions)}")
    g = _graph(registry)
    model, clip, vae, combined, negative_cond = _prompts(g, checkpoint, prompt, negative)
    for index, text in enumerate(regions):
        encoded = g.CLIPTextEncode(text=text, clip=clip, _title=f"Region {index + 1} prompt")
        area = g.ConditioningSetArea(conditioning=encoded, width=column, height=height, x=index * column, y=0,
                                     strength=region_strength)
        combined = g.ConditioningCombine(conditioning_1=combined, conditioning_2=area)[0]
    latent = g.EmptyLatentImage(width=width, height=height, batch_size=1)
    sampled = g.KSampler(model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler,
                         positive=combined, negative=negative_cond, latent_image=latent, denoise=1.0)
    _decode_and_save(g, sampled[0], vae, filename_prefix)
    return g


def unconditional(scheduler: str = "DDIMScheduler", steps: int = 50, seed: int = 0, batch_size: int = 4,
                  width: int = 32, height: int = 32, scheduler_options: str = "{}",
                  checkpoint: str = UNCOND_CHECKPOINT, filename_prefix: str = "unconditional", *,
                  registry: NodeRegistry | None = None) -> Graph:
    """Unconditional generation with a pixel-space model (no prompt, no VAE), sampled by a diffusers scheduler the
    way diffusers' DDPMPipeline/DDIMPipeline do; the sampled LATENT is the image itself."""
    g = _graph(registry)
    model, _clip, _vae = g.CheckpointLoaderSimple(ckpt_name=checkpoint)
    nothing = g.EmptyConditioning()
    latent = g.EmptyPixelLatent(width=width, height=height, batch_size=batch_size)
    sampled = g.DiffusersSchedulerSampler(model=model, positive=nothing, negative=nothing, latent_image=latent,
                                          scheduler=scheduler, seed=seed, steps=steps, cfg=1.0,
                                          scheduler_options=scheduler_options)
    g.SaveImage(images=g.PixelLatentToImage(samples=sampled), filename_prefix=filename_prefix)
    return g


TEMPLATES = {
    "txt2img": txt2img,
    "lora": lora,
    "img2img": img2img,
    "inpaint": inpaint,
    "inpaint_model": inpaint_model,
    "clipseg_inpaint": clipseg_inpaint,
    "outpaint": outpaint,
    "depth2img": depth2img,
    "controlnet": controlnet,
    "hires_fix": hires_fix,
    "hires_fix_model": hires_fix_model,
    "variations": variations,
    "area_composition": area_composition,
    "unconditional": unconditional,
}
