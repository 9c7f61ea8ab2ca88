"""DiffusersSchedulerSampler on the bundled SD-style demo model: same seed, scheduler, steps and guidance scale give
the same latents as diffusers' StableDiffusionPipeline built from the same checkpoint and fed the same prompt
embeddings."""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers import StableDiffusionPipeline

from .conftest import DEMO, MODELS_DIR, base_graph, capture, node

STEPS = 6
CFG = 4.0
SEED = 21


@pytest.fixture(scope="module")
def demo_pipeline():
    from nodes.models.single_file import load_checkpoint

    loaded = load_checkpoint(MODELS_DIR / "checkpoints" / DEMO, dtype=torch.float32)
    encoder = loaded.text_encoders[0]
    return loaded, dict(unet=loaded.unet, vae=loaded.vae, text_encoder=encoder.model, tokenizer=encoder.tokenizer,
                        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "DDIMScheduler"])
def test_same_latents_as_stable_diffusion_pipeline(env, demo_pipeline, name):
    graph = base_graph(batch=2)
    graph.update(
        sample=node("DiffusersSchedulerSampler", model=["ckpt", 0], positive=["pos", 0], negative=["neg", 0],
                    latent_image=["empty", 0], scheduler=name, seed=SEED, steps=STEPS, cfg=CFG,
                    scheduler_options="{}"),
        latent=capture(["sample", 0]), positive=capture(["pos", 0]), negative=capture(["neg", 0]))
    latent, positive, negative = env.values(graph, "latent", "positive", "negative")

    loaded, parts = demo_pipeline
    scheduler = getattr(diffusers, name).from_config(loaded.scheduler_config)
    pipeline = StableDiffusionPipeline(scheduler=scheduler, **parts)
    expected = pipeline(prompt_embeds=positive[0][0], negative_prompt_embeds=negative[0][0], height=64, width=64,
                        num_images_per_prompt=2, num_inference_steps=STEPS, guidance_scale=CFG,
                        generator=torch.Generator().manual_seed(SEED), output_type="latent").images
    got = latent["samples"] * loaded.latent_scale_factor
    assert got.shape == expected.shape == (2, 4, 8, 8)
    # one network call per step on [uncond, cond] rows in both: float32 rounding only
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()
    assert (got[0] - got[1]).abs().max() > 0.1  # the batch's rows got different noise
