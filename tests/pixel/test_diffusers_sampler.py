"""DiffusersSchedulerSampler on pixel-space models: the same seed and scheduler give the same image as diffusers'
DDPMPipeline / DDIMPipeline and as the hand-written loop of the diffusers tutorials, for every supported scheduler;
options reach the scheduler (and bad ones are refused by name); progress is reported per step."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline

import diffusers
from nodes.diffusers_sampling import DIFFUSERS_SCHEDULERS

from .conftest import CLASS_FILE, CLASSES, DDPM_FOLDER, PIXEL_FILE, capture, diffusers_sampler, finish, pixel_graph
from .tiny import SIZE, tiny_pixel_unet, tiny_scheduler


def engine_image(env, sampler: dict, **graph_options) -> np.ndarray:
    graph = pixel_graph(**graph_options)
    graph.update(sample=sampler, image={"class_type": "PixelLatentToImage", "inputs": {"samples": ["sample", 0]}},
                 out=capture(["image", 0]))
    return env.capture(finish(graph)).numpy()


def reference_loop(unet, name: str, steps: int, seed: int, batch: int = 1, config: dict | None = None,
                   step_kwargs: dict | None = None, class_labels=None) -> np.ndarray:
    """The diffusers tutorials' sampling loop, written out, with the scheduler built from the model's saved config
    (`from_config` of a pipeline loaded from disk, where every key is explicit)."""
    saved = {k: v for k, v in tiny_scheduler().config.items() if k != "_use_default_values"}
    scheduler = getattr(diffusers, name).from_config(saved, **(config or {}))
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 3, SIZE, SIZE), generator=generator) * scheduler.init_noise_sigma
    kwargs = dict(step_kwargs or {})
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = generator
    for t in scheduler.timesteps:
        with torch.no_grad():
            out = unet(scheduler.scale_model_input(x, t), t, class_labels=class_labels).sample
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_same_seed_gives_ddpm_pipelines_image(pixel_env):
    pipeline = DDPMPipeline(unet=tiny_pixel_unet(0), scheduler=tiny_scheduler())
    expected = pipeline(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=8,
                        output_type="np").images
    got = engine_image(pixel_env, diffusers_sampler("DDPMScheduler", steps=8, seed=7), batch=2)
    assert got.shape == expected.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    other_seed = engine_image(pixel_env, diffusers_sampler("DDPMScheduler", steps=8, seed=8), batch=2)
    assert np.abs(other_seed - expected).max() > 0.1


def test_ddim_with_eta_gives_ddim_pipelines_image_from_a_diffusers_folder(pixel_env):
    pipeline = DDIMPipeline(unet=tiny_pixel_unet(2), scheduler=tiny_scheduler())
    expected = pipeline(generator=torch.Generator().manual_seed(3), eta=0.5, num_inference_steps=6,
                        output_type="np").images
    got = engine_image(pixel_env, diffusers_sampler("DDIMScheduler", steps=6, seed=3, options='{"eta": 0.5}'),
                       ckpt=DDPM_FOLDER)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", DIFFUSERS_SCHEDULERS)
def test_every_scheduler_matches_the_hand_written_loop(pixel_env, name):
    expected = reference_loop(tiny_pixel_unet(0), name, steps=5, seed=11)
    got = engine_image(pixel_env, diffusers_sampler(name, steps=5, seed=11))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_scheduler_options_reach_the_scheduler(pixel_env):
    options = {"timestep_spacing": "trailing", "beta_schedule": "scaled_linear", "beta_start": 0.001}
    expected = reference_loop(tiny_pixel_unet(0), "EulerDiscreteScheduler", steps=4, seed=5, config=options)
    default = reference_loop(tiny_pixel_unet(0), "EulerDiscreteScheduler", steps=4, seed=5)
    got = engine_image(pixel_env, diffusers_sampler("EulerDiscreteScheduler", steps=4, seed=5,
                                                    options=json.dumps(options)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    assert np.abs(got - default).max() > 0.01


def test_class_labels_reach_a_class_conditional_unet(pixel_env):
    unet = tiny_pixel_unet(1, num_class_embeds=CLASSES)
    images = []
    for label in (0, 2):
        expected = reference_loop(unet, "DDIMScheduler", steps=4, seed=1, class_labels=torch.tensor([label]))
        got = engine_image(pixel_env, diffusers_sampler("DDIMScheduler", steps=4, seed=1), ckpt=CLASS_FILE,
                           class_label=label)
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
        images.append(got)
    assert np.abs(images[0] - images[1]).max() > 0.01


@pytest.mark.parametrize("options, message", [
    ('{"no_such_option": 1}', "DDIMScheduler has no option 'no_such_option'; its options are"),
    ("[1]", "scheduler_options must be a JSON object"),
    ("{oops", "scheduler_options is not valid JSON"),
])
def test_bad_options_fail_with_the_reason(pixel_env, options, message):
    graph = pixel_graph()
    graph.update(sample=diffusers_sampler("DDIMScheduler", options=options), out=capture(["sample", 0]))
    result = pixel_env.run(finish(graph))
    assert not result.ok
    assert message in result.error["exception_message"]
    assert result.error["node_id"] == "sample"


def test_progress_is_reported_once_per_step(pixel_env):
    graph = pixel_graph()
    graph.update(sample=diffusers_sampler("PNDMScheduler", steps=6), out=capture(["sample", 0]))
    events = []
    result = pixel_env.run(finish(graph), listener=events.append)
    assert result.ok, result.error
    progress = [(e.value, e.max) for e in events if type(e).__name__ == "Progress" and e.node == "sample"]
    total = progress[-1][1]
    assert progress == [(i, total) for i in range(1, total + 1)]
    assert total >= 6  # PNDM's PLMS warm-up adds steps to the requested ones
