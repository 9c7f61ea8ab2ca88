"""Fixtures of the workflow tests: a models folder with tiny random checkpoints under the demo model's file names,
the committed sample inputs, and the full registry over both."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphengine import NodeRegistry, RuntimeConfig, build_registry  # noqa: E402
from graphengine.script import TEMPLATES_ENV  # noqa: E402

INPUT_DIR = ROOT / "input"
WORKFLOWS_DIR = ROOT / "workflows"
TEMPLATES_SPEC = "workflows.templates:TEMPLATES"


def write_demo_named_checkpoints(models: Path) -> None:
    """Tiny random-weight models saved with the real single-file writer as the demo model's three files."""
    from nodes.models.single_file import save_checkpoint
    from tests.nodes_sd.tiny import tiny_text_encoder, tiny_unet, tiny_vae
    from workflows.templates import BASE_CHECKPOINT, DEPTH_CHECKPOINT, INPAINT_CHECKPOINT

    folder = models / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    vae, text = tiny_vae(), tiny_text_encoder()
    save_checkpoint(folder / BASE_CHECKPOINT, tiny_unet(), vae, [text], "sd15")
    save_checkpoint(folder / INPAINT_CHECKPOINT, tiny_unet(in_channels=9, seed=3), vae, [text], "sd15_inpaint")
    # No SD1-layout depth family exists, so the 5-channel model is a self-describing custom file.
    save_checkpoint(folder / DEPTH_CHECKPOINT, tiny_unet(in_channels=5, seed=4), vae, [text], "custom")
    write_demo_named_pixel_model(folder)
    write_demo_named_lora(models / "loras")
    write_demo_named_upscale_model(models / "upscale_models")
    write_demo_named_clipseg(models / "clipseg")
    write_demo_named_controlnet(models / "controlnet")


def write_demo_named_controlnet(folder: Path) -> None:
    """A tiny random ControlNet of the tiny UNet (original layout) under the demo ControlNet's name."""
    from nodes.controlnet.layout import controlnet_to_original
    from nodes.models.state_dict import write_safetensors
    from tests.nodes_sd.controlnet_files import tiny_controlnet
    from tests.nodes_sd.tiny import tiny_unet
    from workflows.templates import DEMO_CONTROLNET

    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / DEMO_CONTROLNET, controlnet_to_original(tiny_controlnet(tiny_unet(), 7).state_dict()))


def write_demo_named_pixel_model(folder: Path) -> None:
    """A tiny random pixel-space UNet2DModel under the unconditional demo model's name."""
    from tests.pixel.tiny import tiny_pixel_unet, write_pixel_file
    from workflows.templates import UNCOND_CHECKPOINT

    write_pixel_file(folder / UNCOND_CHECKPOINT, tiny_pixel_unet())


def write_demo_named_clipseg(folder: Path) -> None:
    """A tiny random CLIPSeg folder under the demo CLIPSeg's name."""
    from tests.clipseg.test_clipseg import write_tiny_clipseg
    from workflows.templates import DEMO_CLIPSEG

    write_tiny_clipseg(folder / DEMO_CLIPSEG)


def write_demo_named_upscale_model(folder: Path) -> None:
    """A random 2x ESRGAN (RealESRGAN's key layout, BasicSR's .pth wrapping) under the workflows' model name."""
    from tests.upscale.spandrel_support import write_esrgan
    from workflows.templates import UPSCALE_MODEL

    write_esrgan(folder / UPSCALE_MODEL, scale=2)


def write_demo_named_lora(folder: Path) -> None:
    """A random kohya-format LoRA for the tiny UNet and text encoder, under the demo LoRA's file name."""
    from safetensors.torch import save_file

    from tests.nodes_sd.test_lora_nodes import kohya_lora
    from workflows.templates import DEMO_LORA

    folder.mkdir(parents=True, exist_ok=True)
    save_file(kohya_lora(5), str(folder / DEMO_LORA))


def unbundled_model_names(folder: Path) -> Path:
    """An extra_model_paths.yaml listing, as empty files, the model files the workflows name but the repo does not
    ship (enough for validation, which only checks the names)."""
    from workflows.templates import UPSCALE_MODEL

    (folder / "upscale_models").mkdir(parents=True, exist_ok=True)
    (folder / "upscale_models" / UPSCALE_MODEL).write_bytes(b"")
    config = folder / "extra_model_paths.yaml"
    config.write_text(f"unbundled:\n  base_path: {folder}\n  upscale_models: upscale_models\n", encoding="utf-8")
    return config


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("workflow_models") / "models"
    write_demo_named_checkpoints(models)
    return models


@pytest.fixture(scope="session")
def sd_registry(models_dir: Path) -> NodeRegistry:
    """The full node registry, seeing the tiny checkpoints and the committed inputs."""
    return build_registry(RuntimeConfig(base_dir=models_dir.parent, models_dir=models_dir, input_dir=INPUT_DIR))


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory) -> NodeRegistry:
    """The full node registry with no models (enough to build graphs)."""
    return build_registry(RuntimeConfig(base_dir=tmp_path_factory.mktemp("no_models")))


@pytest.fixture
def templates_installed(monkeypatch) -> None:
    """Point template discovery at this project's templates (the entry point may not be installed)."""
    monkeypatch.setenv(TEMPLATES_ENV, TEMPLATES_SPEC)


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))
