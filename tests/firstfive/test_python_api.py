"""The in-process Python API: PIL images and latents back, equal to what the CLI's SaveImage writes; the bundled
standalone VAE decodes exactly as the checkpoint's own VAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graphengine import PromptValidationError
from nodes.api import Engine, GraphOutput, GraphRunError

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on the left on a blue background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine(ROOT, output_dir=tmp_path_factory.mktemp("out"))


def test_txt2img_returns_pil_images_and_the_latents_they_decode(engine):
    out = engine(PROMPT, num_inference_steps=6, seed=3, num_images_per_prompt=2)
    assert isinstance(out, GraphOutput)
    assert len(out.images) == 2 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in out.images)
    assert out.images[0].mode == "RGB"
    assert len(out.latents) == 1 and tuple(out.latents[0].shape) == (2, 4, 8, 8)
    # the images are the files SaveImage wrote
    saved = [item for ui in out.result.outputs.values() for item in ui["images"]]
    written = Image.open(Path(engine.registry.services.output_dir) / saved[0]["filename"])
    assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(out.images[0]))
    # the prompt shapes the picture: red on the left half
    pixels = np.asarray(out.images[0]).astype(int)
    redness = pixels[..., 0] - pixels[..., 2]
    assert redness[:, :32].mean() > redness[:, 32:].mean()


def test_the_same_seed_gives_the_same_image_and_another_seed_another(engine):
    a = engine(PROMPT, num_inference_steps=4, seed=1).images[0]
    b = engine(PROMPT, num_inference_steps=4, seed=1).images[0]
    c = engine(PROMPT, num_inference_steps=4, seed=2).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_a_graph_built_with_the_engine_runs_and_its_values_are_reachable(engine):
    g = engine.graph()
    model, clip, vae = g.CheckpointLoaderSimple(ckpt_name="graphengine-demo.safetensors")
    empty = g.EmptyLatentImage(width=64, height=64)
    g.PreviewImage(images=g.VAEDecode(samples=empty, vae=vae))
    out = engine.run(g)
    assert len(out.images) == 1 and out.latents[0].abs().sum() == 0
    assert torch.equal(out.value(empty.id)["samples"], out.latents[0])


def test_an_invalid_graph_raises_the_validation_error(engine):
    with pytest.raises(PromptValidationError):
        engine.run({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
                    "2": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
                    "3": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
                    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}})


def test_a_failing_node_raises_with_the_engine_error(tmp_path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "broken.safetensors").write_bytes(b"not a safetensors file")
    engine = Engine(tmp_path)
    g = engine.graph()
    _, _, vae = g.CheckpointLoaderSimple(ckpt_name="broken.safetensors")
    g.PreviewImage(images=g.VAEDecode(samples=g.EmptyLatentImage(width=64, height=64), vae=vae))
    with pytest.raises(GraphRunError, match="CheckpointLoaderSimple") as info:
        engine.run(g)
    assert info.value.result.status == "error" and info.value.result.error["node_id"] == "1"


def test_bundled_standalone_vae_is_listed_and_decodes_like_the_checkpoint_vae(engine):
    assert "graphengine-demo-vae.safetensors" in engine.registry.get("VAELoader").inputs["vae_name"].spec.option_list(
        engine.registry.services)
    assert (ROOT / "models/vae/graphengine-demo-vae.safetensors").stat().st_size < 3_000_000

    def decode_with(vae_from_loader: bool) -> GraphOutput:
        g = engine.graph()
        model, clip, vae = g.CheckpointLoaderSimple(ckpt_name="graphengine-demo.safetensors")
        if vae_from_loader:
            vae = g.VAELoader(vae_name="graphengine-demo-vae.safetensors")
        sampled = g.KSampler(model=model, seed=5, steps=4, cfg=5.0, sampler_name="euler", scheduler="normal",
                             positive=g.CLIPTextEncode(text=PROMPT, clip=clip),
                             negative=g.CLIPTextEncode(text="", clip=clip),
                             latent_image=g.EmptyLatentImage(width=64, height=64))
        g.SaveImage(images=g.VAEDecode(samples=sampled, vae=vae), filename_prefix="vae_test")
        return engine.run(g)

    own, standalone = decode_with(False), decode_with(True)
    assert torch.equal(own.latents[0], standalone.latents[0])
    assert np.array_equal(np.asarray(own.images[0]), np.asarray(standalone.images[0]))
    assert np.asarray(own.images[0]).std() > 10  # a picture, not a flat field
