"""Evicted models really leave RAM: cached results (MODEL/CLIP/VAE handles, conditioning, latents) keep no weights
alive, so a server that serves many checkpoints under a RAM budget that fits two stays within it; a cached handle
whose model was evicted reloads it transparently and gives the same pixels; unloading models frees the RAM.

RSS is read from /proc/self/statm (Linux); growth is compared with the checkpoints' in-RAM size, with a margin of
one checkpoint for allocator slack and load-time buffers. Old behaviour for scale: every checkpoint stayed."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from graphengine import Executor, Node, NodeOutput, NodeRegistry, RuntimeConfig, Socket
from nodes import register
from nodes.models import save_checkpoint
from nodes.models.manager import module_bytes, trim_native_heap

from .tiny import DEMO_TEXT, DEMO_UNET, DEMO_VAE

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="RSS is read from /proc")

CHECKPOINTS = 5
# The demo architecture with a wider UNet: ~125 MB per checkpoint in RAM (fp32), 62 MB on disk (fp16).
BIG_UNET = dict(DEMO_UNET, block_out_channels=(128, 256, 256), attention_head_dim=8)
MiB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settled_rss_bytes() -> int:
    """A baseline: RSS once garbage is collected and freed heap pages are handed back (after earlier tests)."""
    gc.collect()
    trim_native_heap()
    return rss_bytes()


class Capture(Node):
    """Test output node: exposes its input value in the UI output."""

    OUTPUT_NODE = True
    value: Annotated[Any, Socket("*")]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput((), ui={"value": [self.value]})


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, int]:
    """A models folder of distinct random checkpoints; returns (base dir, in-RAM bytes of one checkpoint)."""
    base = tmp_path_factory.mktemp("memory")
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True)
    unet, vae, text = UNet2DConditionModel(**BIG_UNET), AutoencoderKL(**DEMO_VAE), CLIPTextModel(
        CLIPTextConfig(**DEMO_TEXT))
    size = sum(module_bytes(m) for m in (unet, vae, text))
    for i in range(CHECKPOINTS):
        for j, module in enumerate((unet, vae, text)):
            _randomize(module, 10 * i + j)
        save_checkpoint(folder / f"big_{i}.safetensors", unet.eval(), vae.eval(), [text.eval()], "custom",
                        dtype=torch.float16)
    del unet, vae, text
    gc.collect()
    trim_native_heap()
    return base, size


def make_executor(base: Path, budget: int) -> Executor:
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=base, options={"model_manager": {"device": "cpu",
                                                                               "ram_budget_bytes": budget}}))
    registry.register(Capture, python_module="tests")
    return Executor(registry)


def txt2img(index: int, seed: int = 0) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"big_{index}.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "out": {"class_type": "Capture", "inputs": {"value": ["5", 0]}},
    }


def run(executor: Executor, prompt: dict):
    result = executor.execute(prompt)
    assert result.ok, result.error
    return result


def cached_parts(executor: Executor, index: int) -> list[str]:
    """Which parts of checkpoint `index` the model manager holds."""
    manager = executor.registry.services.manager
    return [str(key[4:]) for key in manager.cached_keys() if f"big_{index}.safetensors" in str(key)]


def test_serving_many_checkpoints_stays_within_the_budget(base):
    base_dir, size = base
    executor = make_executor(base_dir, budget=int(2.2 * size))
    run(executor, txt2img(0))  # warm-up: imports, tokenizer, kernels; one checkpoint resident
    start = settled_rss_bytes()
    growth = []
    for index in range(1, CHECKPOINTS):
        run(executor, txt2img(index))
        growth.append(rss_bytes() - start)
    manager = executor.registry.services.manager
    assert manager.ram_used_bytes <= 2.2 * size
    assert cached_parts(executor, 0) == []  # evicted by the model manager ...
    assert len(executor.cache) >= 5 * CHECKPOINTS  # ... while every result (handles included) is still cached
    # At most one more checkpoint than at the start, plus a checkpoint's worth of slack; keeping all would add 4.
    assert max(growth) < 2 * size, [f"{g / MiB:.0f} MiB" for g in growth] + [f"checkpoint {size / MiB:.0f} MiB"]


def test_a_cached_handle_reloads_its_evicted_model_with_identical_results(base):
    base_dir, size = base
    executor = make_executor(base_dir, budget=int(1.5 * size))
    run(executor, txt2img(0, seed=1))
    run(executor, txt2img(1))
    assert "('unet',)" not in cached_parts(executor, 0)
    again = run(executor, txt2img(0, seed=2))  # loader and text encoding cached; sampler and decoder re-run
    assert {"1", "2"} <= set(again.cached) and {"4", "5"} <= set(again.executed)
    assert "('unet',)" in cached_parts(executor, 0)  # the UNet came back for the cached MODEL
    image = again.outputs["out"]["value"][0]
    fresh = run(make_executor(base_dir, budget=int(1.5 * size)), txt2img(0, seed=2)).outputs["out"]["value"][0]
    assert torch.isfinite(image).all() and torch.equal(image, fresh)


def test_unloading_models_frees_their_ram_while_results_stay_cached(base):
    base_dir, size = base
    executor = make_executor(base_dir, budget=int(2.2 * size))
    before = settled_rss_bytes()
    run(executor, txt2img(2))
    run(executor, txt2img(3))
    loaded = rss_bytes()
    assert loaded - before > 1.5 * size  # both checkpoints are in RAM
    cached = len(executor.cache)
    executor.registry.services.unload_models()
    assert executor.registry.services.manager.cached_keys() == [] and len(executor.cache) == cached
    assert loaded - rss_bytes() > 1.5 * size, f"{(loaded - rss_bytes()) / MiB:.0f} MiB freed of {2 * size / MiB:.0f}"
