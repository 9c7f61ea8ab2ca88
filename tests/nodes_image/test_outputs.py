import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ..nodes_basic.helpers import const

WORKFLOW = {"last_node_id": 2, "nodes": [{"id": 1, "type": "SaveAnimatedPNG"}], "version": 0.4}


def animation() -> torch.Tensor:
    """Three 4×6 frames of solid red, green and blue."""
    images = torch.zeros(3, 4, 6, 3)
    for index in range(3):
        images[index, ..., index] = 1.0
    return images


def save(executor, node: str, **inputs):
    prompt = {"i": const("Image", animation()),
              "s": {"class_type": node, "inputs": {"images": ["i", 0], "filename_prefix": "anim/clip", "fps": 4.0,
                                                   **inputs}}}
    return executor.execute(prompt, extra_data={"extra_pnginfo": {"workflow": WORKFLOW}})


def comf_chunks(data: bytes) -> dict[str, str]:
    """The `comf` chunks of a PNG: key NUL value."""
    chunks, offset = {}, 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"comf":
            key, _, value = data[offset + 8:offset + 8 + length].partition(b"\0")
            chunks[key.decode("latin-1")] = value.decode("latin-1")
        offset += 12 + length
    return chunks


def check_frames(path, fps: float) -> None:
    with Image.open(path) as picture:
        assert picture.n_frames == 3 and picture.is_animated and picture.size == (6, 4)
        for index in range(3):
            picture.seek(index)
            assert picture.info["duration"] == int(1000 / fps)
            pixel = picture.convert("RGB").getpixel((2, 1))
            assert pixel == tuple(255 if c == index else 0 for c in range(3))


def test_save_animated_png(executor, config):
    result = save(executor, "SaveAnimatedPNG", compress_level=9)
    assert result.ok, result.error
    assert result.outputs["s"] == {"images": [{"filename": "clip_00001_.png", "subfolder": "anim", "type": "output"}],
                                   "animated": [True]}
    path = config.output_dir / "anim" / "clip_00001_.png"
    check_frames(path, 4.0)
    chunks = comf_chunks(path.read_bytes())
    assert json.loads(chunks["workflow"]) == WORKFLOW
    assert json.loads(chunks["prompt"])["s"]["class_type"] == "SaveAnimatedPNG"
    again = save(executor, "SaveAnimatedPNG", compress_level=0)
    assert again.outputs["s"]["images"][0]["filename"] == "clip_00002_.png"


@pytest.mark.parametrize("lossless", [True, False])
def test_save_animated_webp(executor, config, lossless):
    result = save(executor, "SaveAnimatedWEBP", lossless=lossless, quality=90, method="fastest")
    assert result.ok, result.error
    assert result.outputs["s"] == {"images": [{"filename": "clip_00001_.webp", "subfolder": "anim",
                                               "type": "output"}], "animated": [True]}
    path = config.output_dir / "anim" / "clip_00001_.webp"
    with Image.open(path) as picture:
        assert picture.format == "WEBP"
        exif = picture.getexif()
        assert exif[0x0110].startswith("prompt:") and json.loads(exif[0x0110][7:])["s"]["inputs"]["fps"] == 4.0
        assert exif[0x010F] == "workflow:" + json.dumps(WORKFLOW)
        frames = []
        for index in range(picture.n_frames):
            picture.seek(index)
            frames.append(np.asarray(picture.convert("RGB"), dtype=np.int16))
            assert picture.info["duration"] == 250
    assert len(frames) == 3
    for index, frame in enumerate(frames):
        expected = np.zeros_like(frame)
        expected[..., index] = 255
        assert np.abs(frame - expected).max() <= (0 if lossless else 40)


def test_animated_saves_without_metadata_when_disabled(executor, config):
    executor.registry.services.config.options["disable_metadata"] = True
    assert save(executor, "SaveAnimatedPNG", compress_level=1).ok
    assert comf_chunks((config.output_dir / "anim" / "clip_00001_.png").read_bytes()) == {}


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/abs", "a/../../b"])
def test_animated_save_refuses_paths_outside_output(executor, config, prefix):
    prompt = {"i": const("Image", animation()),
              "s": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["i", 0], "filename_prefix": prefix,
                                                                "fps": 6.0, "compress_level": 4}}}
    result = executor.execute(prompt)
    assert not result.ok and "outside the output folder" in result.error["exception_message"]
    assert not any(config.output_dir.parent.glob("*.png"))


def test_animated_bounds(rejected):
    frames = {"i": const("Image", animation())}
    assert rejected("SaveAnimatedWEBP", {"images": ["i", 0], "filename_prefix": "x", "fps": 0.0, "lossless": True,
                                         "quality": 101, "method": "default"}, frames) == \
        {"value_smaller_than_min", "value_bigger_than_max"}


def test_mask_preview_writes_grey_png_to_temp(executor, config):
    mask = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    prompt = {"m": const("Mask", mask), "p": {"class_type": "MaskPreview", "inputs": {"mask": ["m", 0]}}}
    result = executor.execute(prompt)
    assert result.ok, result.error
    [entry] = result.outputs["p"]["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    with Image.open(config.temp_dir / entry["filename"]) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels[..., 0].tolist() == [[0, 255], [127, 63]] and (pixels[..., 0] == pixels[..., 2]).all()


def test_load_image_output_reads_a_saved_image(executor, config, registry):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 51
    Image.fromarray(rgba).save(config.output_dir / "saved.png")
    Image.fromarray(rgba[..., :3]).save(config.input_dir / "saved.png")
    options = registry.object_info()["LoadImageOutput"]["input"]["required"]["image"]
    assert options[0] == ["saved.png [output]"]
    assert options[1]["image_folder"] == "output" and options[1]["remote"]["route"] == "/internal/files/output"
    for name in ("saved.png [output]", "saved.png"):
        prompt = {"n": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
                  "img": {"class_type": "Capture", "inputs": {"value": ["n", 0]}},
                  "mask": {"class_type": "Capture", "inputs": {"value": ["n", 1]}}}
        result = executor.execute(prompt)
        assert result.ok, result.error
        image, mask = result.outputs["img"]["value"][0], result.outputs["mask"]["value"][0]
        assert torch.allclose(image[..., 0], torch.full((1, 2, 3), 200 / 255))
        assert torch.allclose(mask, torch.full((1, 2, 3), 0.8))


@pytest.mark.parametrize("name", ["../secret.png [output]", "missing.png [output]", "/etc/passwd"])
def test_load_image_output_refuses_escapes_and_missing_files(rejected, name):
    assert rejected("LoadImageOutput", {"image": name}) == {"custom_validation_failed"}


@pytest.mark.parametrize(("value", "text"), [
    ("hello", "hello"), (3, "3"), (2.5, "2.5"), (True, "True"), ({"a": [1, 2]}, '{"a": [1, 2]}')])
def test_preview_any_constants(executor, value, text):
    result = executor.execute({"p": {"class_type": "PreviewAny", "inputs": {"source": value}}})
    assert result.ok, result.error
    assert result.outputs["p"] == {"text": [text]}


def test_preview_any_of_a_tensor_is_its_str(executor):
    prompt = {"i": const("Image", torch.zeros(1, 1, 1, 3)),
              "p": {"class_type": "PreviewAny", "inputs": {"source": ["i", 0]}}}
    result = executor.execute(prompt)
    assert result.outputs["p"]["text"][0] == str(torch.zeros(1, 1, 1, 3))
