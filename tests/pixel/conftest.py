"""A models folder with tiny random pixel-space models (single file, class-conditional file, DDPMPipeline folder,
a diffusion_models copy) and a tiny SD1 checkpoint, plus a registry/executor with every node and a capture node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphengine import NodeRegistry, RuntimeConfig
from nodes import register
from tests.nodes_sd.conftest import Capture, Env

from .tiny import tiny_pixel_unet, write_ddpm_folder, write_pixel_file

PIXEL_FILE = "tiny_pixel.safetensors"
CLASS_FILE = "tiny_pixel_classes.safetensors"
DDPM_FOLDER = "tiny_ddpm"
SD_FILE = "tiny_sd15.safetensors"
CLASSES = 3


def write_models(models: Path) -> None:
    from nodes.models.single_file import save_checkpoint
    from tests.nodes_sd.tiny import tiny_text_encoder, tiny_unet, tiny_vae

    write_pixel_file(models / "checkpoints" / PIXEL_FILE, tiny_pixel_unet(0))
    write_pixel_file(models / "checkpoints" / CLASS_FILE, tiny_pixel_unet(1, num_class_embeds=CLASSES))
    write_pixel_file(models / "diffusion_models" / PIXEL_FILE, tiny_pixel_unet(0))
    write_ddpm_folder(models / "checkpoints" / DDPM_FOLDER, tiny_pixel_unet(2))
    write_ddpm_folder(models / "diffusers" / DDPM_FOLDER, tiny_pixel_unet(2))
    save_checkpoint(models / "checkpoints" / SD_FILE, tiny_unet(), tiny_vae(), [tiny_text_encoder()], "sd15")


@pytest.fixture(scope="session")
def pixel_env(tmp_path_factory) -> Env:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("pixel")
    write_models(base / "models")
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=base))
    from nodes.models.folders import ModelFolders

    if not hasattr(ModelFolders, "from_config"):
        registry.services.__dict__["folders"] = ModelFolders(base / "models")
    registry.register(Capture, python_module="tests")
    yield Env(base, registry)
    torch.set_num_threads(before)


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def pixel_graph(ckpt: str = PIXEL_FILE, size: int = 16, batch: int = 1, loader: str = "CheckpointLoaderSimple",
                class_label: int | None = None) -> dict:
    """Loader, empty conditioning (with a class label if given) and an empty pixel latent."""
    name_input = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name",
                  "DiffusersLoader": "model_path"}[loader]
    extra = {"weight_dtype": "default"} if loader == "UNETLoader" else {}
    graph = {"ckpt": node(loader, **{name_input: ckpt}, **extra), "empty_cond": node("EmptyConditioning"),
             "cond": ["empty_cond", 0],
             "latent": node("EmptyPixelLatent", width=size, height=size, batch_size=batch)}
    if class_label is not None:
        graph["labelled"] = node("ConditioningSetClassLabel", conditioning=["empty_cond", 0], class_label=class_label)
        graph["cond"] = ["labelled", 0]
    return graph


def finish(graph: dict) -> dict:
    """Replace the "cond" placeholder by links."""
    cond = graph.pop("cond")
    for value in graph.values():
        for key in ("positive", "negative"):
            if value["inputs"].get(key) == "COND":
                value["inputs"][key] = cond
    return graph


def diffusers_sampler(scheduler: str = "DDPMScheduler", steps: int = 5, seed: int = 0, cfg: float = 1.0,
                      options: str = "{}", latent=("latent", 0)) -> dict:
    return node("DiffusersSchedulerSampler", model=["ckpt", 0], positive="COND", negative="COND",
                latent_image=list(latent), scheduler=scheduler, seed=seed, steps=steps, cfg=cfg,
                scheduler_options=options)


def ksampler(sampler: str = "euler", steps: int = 4, seed: int = 0) -> dict:
    return node("KSampler", model=["ckpt", 0], seed=seed, steps=steps, cfg=1.0, sampler_name=sampler,
                scheduler="normal", positive="COND", negative="COND", latent_image=["latent", 0], denoise=1.0)


def capture(link: list) -> dict:
    return node("Capture", value=link)
