"""The CLIPSeg node on a tiny random-weight CLIPSeg folder (config built here, the shipped CLIP tokenizer): mask,
heatmap and BW shapes and ranges, the mask equal to the post-processing of the model's own logits, threshold /
blur / dilation behaviour on hand-made logits, and clear errors for a missing model or processor file."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from graphengine import Executor, NodeRegistry, RuntimeConfig  # noqa: E402
from nodes import register  # noqa: E402
from nodes.clipseg import mask_from_logits  # noqa: E402
from tests.nodes_basic.conftest import Capture, ImageConst  # noqa: E402
from tests.nodes_basic.helpers import const  # noqa: E402

MODEL_SIZE = 32  # the tiny model's input and output resolution
PROMPT = "the red circle"


def write_tiny_clipseg(folder: Path) -> None:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, ViTImageProcessor

    torch.manual_seed(0)
    config = CLIPSegConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": MODEL_SIZE, "patch_size": 8},
        projection_dim=16, extract_layers=[1], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=32)
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": MODEL_SIZE, "width": MODEL_SIZE}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)


def make_registry(base: Path) -> NodeRegistry:
    registry = NodeRegistry()
    register(registry, RuntimeConfig(base_dir=base))
    registry.register_all([Capture, ImageConst], python_module="tests")
    return registry


@pytest.fixture(scope="module")
def clipseg_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("clipseg")
    write_tiny_clipseg(base / "models" / "clipseg" / "tiny-clipseg")
    return base


@pytest.fixture(scope="module")
def registry(clipseg_base) -> NodeRegistry:
    return make_registry(clipseg_base)


def image_batch(batch: int = 2, height: int = 40, width: int = 50) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(1))


def run_clipseg(registry: NodeRegistry, image: torch.Tensor, **inputs):
    prompt = {"i": const("Image", image),
              "n": {"class_type": "CLIPSeg", "inputs": {"image": ["i", 0], "text": PROMPT, **inputs}}}
    for slot, name in enumerate(("mask", "heatmap", "bw")):
        prompt[name] = {"class_type": "Capture", "inputs": {"value": ["n", slot]}}
    return Executor(registry).execute(prompt)


def reference_logits(folder: Path, image: torch.Tensor) -> torch.Tensor:
    """The model's logits computed directly with transformers, for the same pixels and text."""
    from transformers import CLIPSegForImageSegmentation, ViTImageProcessor

    from nodes.models.families import load_tokenizer

    model = CLIPSegForImageSegmentation.from_pretrained(str(folder), local_files_only=True).eval()
    processor = ViTImageProcessor.from_pretrained(str(folder), local_files_only=True)
    tokens = load_tokenizer()([PROMPT] * len(image), padding="max_length", max_length=77, return_tensors="pt")
    pixels = processor(images=[(img * 255).round().to(torch.uint8).numpy() for img in image],
                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     pixel_values=pixels).logits.reshape(len(image), MODEL_SIZE, MODEL_SIZE)


def test_mask_heatmap_and_bw_shapes_ranges_and_the_models_logits(registry, clipseg_base):
    image = image_batch()
    result = run_clipseg(registry, image, every_batch=True, threshold=0.3, blur=1.5, dilation_factor=1)
    assert result.ok, result.error
    mask, heatmap, bw = (result.outputs[name]["value"][0] for name in ("mask", "heatmap", "bw"))
    assert mask.shape == (2, 40, 50) and heatmap.shape == bw.shape == (2, 40, 50, 3)
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and mask.max() > 0.5
    assert torch.equal(bw, mask.unsqueeze(-1).expand(-1, -1, -1, 3))
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
    logits = reference_logits(clipseg_base / "models/clipseg/tiny-clipseg", image)
    expected = mask_from_logits(logits, threshold=0.3, blur=1.5, dilation=1, size=(40, 50))
    assert torch.allclose(mask, expected, atol=1e-4)


def test_without_every_batch_only_the_first_image_is_segmented(registry):
    image = image_batch(3)
    everything = run_clipseg(registry, image, every_batch=True)
    first = run_clipseg(registry, image)  # the defaults: blur 7, threshold 0.4, dilation 4, first image only
    assert everything.ok and first.ok, (everything.error, first.error)
    first_mask = first.outputs["mask"]["value"][0]
    assert first_mask.shape == (1, 40, 50)
    assert torch.allclose(first_mask, everything.outputs["mask"]["value"][0][:1], atol=1e-5)


def logits_of(probabilities: torch.Tensor) -> torch.Tensor:
    return torch.logit(probabilities.to(torch.float64)).to(torch.float32)


def test_threshold_zeroes_low_probabilities_and_rescales_the_rest():
    probabilities = torch.tensor([[[0.1, 0.3, 0.5, 0.8]]])
    mask = mask_from_logits(logits_of(probabilities), threshold=0.4, blur=0, dilation=0, size=(1, 4))
    assert torch.allclose(mask, torch.tensor([[[0.0, 0.0, 0.5 / 0.8, 1.0]]]), atol=1e-6)
    nothing = mask_from_logits(logits_of(probabilities), threshold=0.9, blur=0, dilation=0, size=(1, 4))
    assert torch.equal(nothing, torch.zeros(1, 1, 4))


def test_dilation_grows_a_point_into_a_square_and_blur_spreads_it():
    probabilities = torch.full((1, 9, 9), 0.05)
    probabilities[0, 4, 4] = 0.9
    logits = logits_of(probabilities)
    for dilation in (0, 1, 3):
        mask = mask_from_logits(logits, threshold=0.4, blur=0, dilation=dilation, size=(9, 9))
        square = torch.zeros(9, 9)
        square[4 - dilation:5 + dilation, 4 - dilation:5 + dilation] = 1.0
        assert torch.equal(mask[0], square)
    blurred = mask_from_logits(logits, threshold=0.4, blur=1.0, dilation=0, size=(9, 9))[0]
    assert blurred[4, 4] == 1.0 and 0 < blurred[4, 5] < 1 and blurred[4, 5] == blurred[5, 4]
    assert blurred[4, 5] > blurred[4, 6] > 0


def test_the_mask_is_resized_to_the_image():
    probabilities = torch.zeros(2, 4, 4) + 0.1
    probabilities[:, :2] = 0.9  # the top half found
    mask = mask_from_logits(logits_of(probabilities), threshold=0.4, blur=0, dilation=0, size=(16, 8))
    assert mask.shape == (2, 16, 8)
    assert torch.all(mask[:, :6] == 1.0) and torch.all(mask[:, 10:] == 0.0)


def test_no_model_folder_is_a_clear_error(tmp_path):
    result = run_clipseg(make_registry(tmp_path), image_batch(1))
    assert not result.ok
    assert result.error["node_type"] == "CLIPSeg"
    assert "models/clipseg" in result.error["exception_message"]


def test_a_folder_without_its_processor_file_is_named(tmp_path, clipseg_base):
    folder = tmp_path / "models" / "clipseg" / "incomplete"
    shutil.copytree(clipseg_base / "models/clipseg/tiny-clipseg", folder)
    (folder / "preprocessor_config.json").unlink()
    result = run_clipseg(make_registry(tmp_path), image_batch(1), model_name="incomplete")
    assert not result.ok
    message = result.error["exception_message"]
    assert "incomplete" in message and "preprocessor_config.json" in message
