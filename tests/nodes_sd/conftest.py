"""A models folder of tiny random checkpoints written with the real single-file writer, and a registry/executor
with every node of the pack plus a capture node, shared by the whole test folder (models load once)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from graphengine import (CancelToken, Executor, Node, NodeOutput, NodeRegistry, RuntimeConfig,  # noqa: E402
                         Socket)
from nodes import register  # noqa: E402

from .tiny import tiny_clip_g, tiny_dpt, tiny_sdxl_unet, tiny_text_encoder, tiny_unet, tiny_vae  # noqa: E402

IMAGE_SIZE = 64


class Capture(Node):
    """Test output node: exposes its input value in the UI output."""

    OUTPUT_NODE = True
    value: Annotated[Any, Socket("*")]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput((), ui={"value": [self.value]})


def write_models(base: Path) -> None:
    from nodes.models.single_file import save_checkpoint

    models = base / "models"
    for sub in ("checkpoints", "vae", "text_encoders", "diffusion_models", "depth", "configs"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    unet, vae, text = tiny_unet(), tiny_vae(), tiny_text_encoder()
    save_checkpoint(models / "checkpoints" / "tiny_sd15.safetensors", unet, vae, [text], "sd15")
    save_checkpoint(models / "checkpoints" / "tiny_inpaint.safetensors", tiny_unet(in_channels=9, seed=3), vae,
                    [text], "sd15_inpaint")
    save_checkpoint(models / "checkpoints" / "tiny_ip2p.safetensors", tiny_unet(in_channels=8, seed=5), vae,
                    [text], "sd15_ip2p")
    # SD1-layout depth models do not exist as a family, so the 5-channel variant is a self-describing custom file.
    save_checkpoint(models / "checkpoints" / "tiny_depth.safetensors", tiny_unet(in_channels=5, seed=4), vae,
                    [text], "custom")
    save_checkpoint(models / "checkpoints" / "tiny_sdxl.safetensors", tiny_sdxl_unet(), vae,
                    [text, tiny_clip_g()], "sdxl")
    save_checkpoint(models / "vae" / "tiny_vae.safetensors", None, vae, [], "sd15")
    save_checkpoint(models / "text_encoders" / "tiny_clip.safetensors", None, None, [text], "sd15")
    save_checkpoint(models / "diffusion_models" / "tiny_unet.safetensors", unet, None, [], "sd15")
    (models / "checkpoints" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a model")
    dpt, processor = tiny_dpt()
    dpt.save_pretrained(models / "depth" / "tiny_dpt")
    processor.save_pretrained(models / "depth" / "tiny_dpt")
    (models / "configs" / "v1-inference.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    (models / "configs" / "v2-inference-v.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")


def write_inputs(base: Path) -> None:
    inputs = base / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    rgb = np.stack([x * 4, y * 4, rng.integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE))], axis=-1).astype(np.uint8)
    PILImage.fromarray(rgb, "RGB").save(inputs / "scene.png")
    # alpha 0 on the left half: LoadImage's MASK (1 - alpha) selects the left half for inpainting
    alpha = np.where(x < IMAGE_SIZE // 2, 0, 255).astype(np.uint8)
    PILImage.fromarray(np.dstack([rgb, alpha]), "RGBA").save(inputs / "scene_masked.png")


@dataclass
class Env:
    base: Path
    registry: NodeRegistry

    def run(self, prompt: dict, *, cancel: CancelToken | None = None, extra_data: dict | None = None,
            listener=None):
        """Execute with a fresh result cache (loaded models stay in the shared manager)."""
        executor = Executor(self.registry)
        if listener is not None:
            executor.events.subscribe(listener)
        return executor.execute(prompt, cancel=cancel, extra_data=extra_data)

    def capture(self, prompt: dict, node: str = "out"):
        result = self.run(prompt)
        assert result.ok, result.error
        return result.outputs[node]["value"][0]


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Tiny tensors run faster on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> Env:
    base = tmp_path_factory.mktemp("sd")
    write_models(base)
    write_inputs(base)
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=base))
    from nodes.models.folders import ModelFolders

    if not hasattr(ModelFolders, "from_config"):  # until the services' folder factory exists
        registry.services.__dict__["folders"] = ModelFolders(base / "models")
    registry.register(Capture, python_module="tests")
    return Env(base, registry)


@pytest.fixture(scope="session")
def nets(env):
    """Tiny ControlNets and T2I-Adapters in every file layout, in the models folder's controlnet/."""
    from .controlnet_files import Nets

    return Nets(env.base / "models" / "controlnet")
