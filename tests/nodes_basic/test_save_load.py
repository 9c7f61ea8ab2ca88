import hashlib
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from nodes.image import LoadImage, LoadImageMask

from .helpers import const, load, load_error

WORKFLOW = {"last_node_id": 2, "nodes": [{"id": 1, "type": "SaveImage"}], "version": 0.4}


def save_prompt(image: torch.Tensor, prefix: str = "ComfyUI", node: str = "SaveImage") -> dict:
    inputs = {"images": ["i", 0]}
    if node == "SaveImage":
        inputs["filename_prefix"] = prefix
    return {"i": const("Image", image), "s": {"class_type": node, "inputs": inputs}}


def test_save_image_names_counts_and_metadata(executor, config):
    image = torch.tensor([[[[0.0, 0.5, 1.0], [0.2, 0.4, 0.999]]]])
    first = executor.execute(save_prompt(image), extra_data={"extra_pnginfo": {"workflow": WORKFLOW}})
    assert first.ok, first.error
    assert first.outputs["s"]["images"] == [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]
    second = executor.execute(save_prompt(image * 0.5), extra_data={"extra_pnginfo": {"workflow": WORKFLOW}})
    assert second.outputs["s"]["images"][0]["filename"] == "ComfyUI_00002_.png"
    with Image.open(config.output_dir / "ComfyUI_00001_.png") as png:
        assert json.loads(png.text["workflow"]) == WORKFLOW
        prompt = json.loads(png.text["prompt"])
        pixels = np.asarray(png)
    assert prompt["s"]["class_type"] == "SaveImage"
    assert prompt["s"]["inputs"] == {"images": ["i", 0], "filename_prefix": "ComfyUI"}
    assert prompt["i"]["inputs"]["data"] == save_prompt(image)["i"]["inputs"]["data"]
    # clip(255·x) truncated to uint8
    assert pixels.tolist() == [[[0, 127, 255], [51, 102, 254]]]


def test_save_image_batch_subfolder_and_existing_counter(executor, config):
    folder = config.output_dir / "run" / "a"
    folder.mkdir(parents=True)
    (folder / "shot_00041_.png").write_bytes(b"x")
    (folder / "other_00100_.png").write_bytes(b"x")
    result = executor.execute(save_prompt(torch.zeros(2, 2, 2, 3), prefix="run/a/shot"))
    assert result.ok, result.error
    assert result.outputs["s"]["images"] == [
        {"filename": "shot_00042_.png", "subfolder": "run/a", "type": "output"},
        {"filename": "shot_00043_.png", "subfolder": "run/a", "type": "output"}]
    assert (folder / "shot_00043_.png").is_file()


def test_save_image_tokens(executor, config):
    result = executor.execute(save_prompt(torch.zeros(2, 4, 6, 3), prefix="img_%width%x%height%_b%batch_num%"))
    names = [entry["filename"] for entry in result.outputs["s"]["images"]]
    assert names == ["img_6x4_b0_00001_.png", "img_6x4_b1_00002_.png"]
    again = executor.execute(save_prompt(torch.ones(1, 4, 6, 3), prefix="img_%width%x%height%_b%batch_num%"))
    assert again.outputs["s"]["images"][0]["filename"] == "img_6x4_b0_00003_.png"


@pytest.mark.parametrize("prefix", ["../evil", "a/../../evil", "/tmp/evil", "..", "sub/../../x", "\x00evil", ""])
def test_save_image_prefix_outside_output_is_an_error(executor, config, prefix):
    result = executor.execute(save_prompt(torch.zeros(1, 2, 2, 3), prefix=prefix))
    assert not result.ok
    assert "output folder" in result.error["exception_message"] or "filename_prefix" in \
        result.error["exception_message"]
    assert not list(config.base_dir.glob("evil*")) and not list(config.output_dir.rglob("*.png"))


def test_save_image_refuses_symlinked_subfolder_leaving_output(executor, config, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (config.output_dir / "link").symlink_to(outside, target_is_directory=True)
    result = executor.execute(save_prompt(torch.zeros(1, 2, 2, 3), prefix="link/x"))
    assert not result.ok and "output folder" in result.error["exception_message"]
    assert not list(outside.iterdir())


def test_preview_image_goes_to_temp(executor, config):
    result = executor.execute(save_prompt(torch.zeros(1, 2, 2, 3), node="PreviewImage"))
    [entry] = result.outputs["s"]["images"]
    assert entry["type"] == "temp" and entry["subfolder"] == ""
    assert entry["filename"].startswith("ComfyUI_temp_") and entry["filename"].endswith("_00001_.png")
    assert len(entry["filename"]) == len("ComfyUI_temp_abcde_00001_.png")
    with Image.open(config.temp_dir / entry["filename"]) as png:
        assert "prompt" in png.text


# -- loading -------------------------------------------------------------------------------------------------------

def rgba_pixels() -> np.ndarray:
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[..., 0] = [[10, 20, 30], [40, 50, 60]]
    pixels[..., 1] = 128
    pixels[..., 2] = 255
    pixels[..., 3] = [[0, 51, 255], [255, 102, 0]]
    return pixels


def test_load_image_with_alpha_gives_one_minus_alpha(executor, config):
    pixels = rgba_pixels()
    Image.fromarray(pixels, "RGBA").save(config.input_dir / "rgba.png")
    image = load(executor, "rgba.png")
    mask = load(executor, "rgba.png", slot=1)
    assert image.shape == (1, 2, 3, 3)
    assert torch.allclose(image[0], torch.from_numpy(pixels[..., :3] / 255.0).float())
    assert torch.allclose(mask[0], torch.from_numpy(1.0 - pixels[..., 3] / 255.0).float())


def test_load_image_without_alpha_gives_empty_64_mask(executor, config):
    Image.new("RGB", (5, 4), (255, 0, 0)).save(config.input_dir / "red.jpg", quality=100)
    mask = load(executor, "red.jpg", slot=1)
    assert torch.equal(mask, torch.zeros(1, 64, 64))
    assert load(executor, "red.jpg").shape == (1, 4, 5, 3)


def test_load_image_multi_frame_is_a_batch(executor, config):
    frames = [Image.new("RGB", (4, 3), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(config.input_dir / "anim.gif", save_all=True, append_images=frames[1:])
    image = load(executor, "anim.gif")
    assert image.shape == (3, 3, 4, 3)
    assert torch.allclose(image[:, 0, 0], torch.eye(3), atol=0.02)


def test_load_image_applies_exif_orientation(executor, config):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(config.input_dir / "rotated.jpg", exif=exif.tobytes())
    assert load(executor, "rotated.jpg").shape == (1, 4, 2, 3)


def test_load_image_16_bit_keeps_precision(executor, config):
    Image.fromarray(np.array([[0, 65535, 32768]], dtype=np.uint16)).save(config.input_dir / "deep.png")
    image = load(executor, "deep.png")
    assert torch.allclose(image[0, 0, :, 0], torch.tensor([0.0, 1.0, 32768 / 65535]))
    assert torch.equal(image[..., 0], image[..., 2])


def test_load_image_subfolder_and_annotations(executor, config):
    (config.input_dir / "sub").mkdir()
    Image.new("RGB", (2, 2), (255, 255, 255)).save(config.input_dir / "sub" / "white.png")
    Image.new("RGB", (3, 3), (0, 0, 0)).save(config.output_dir / "black.png")
    Image.new("RGB", (1, 1), (0, 0, 0)).save(config.temp_dir / "dot.png")
    assert torch.equal(load(executor, "sub/white.png"), torch.ones(1, 2, 2, 3))
    assert load(executor, "black.png [output]").shape == (1, 3, 3, 3)
    assert load(executor, "dot.png [temp]").shape == (1, 1, 1, 3)
    assert load(executor, "sub/white.png [input]").shape == (1, 2, 2, 3)


def test_load_image_combo_lists_input_images(registry, config):
    for name in ["b.png", "a.jpg", "notes.txt"]:
        (config.input_dir / name).write_bytes(b"")
    (config.input_dir / "folder.png").mkdir()
    [options, extra] = registry.node_info("LoadImage")["input"]["required"]["image"]
    assert options == ["a.jpg", "b.png"] and extra == {"image_upload": True}


def test_load_image_hooks_with_services(registry, config):
    (config.input_dir / "sub").mkdir()
    Image.new("RGB", (2, 2)).save(config.input_dir / "sub" / "x.png")
    services = registry.services
    assert LoadImage.validate_inputs({"image": "sub/x.png"}, services) is True
    assert "missing.png" in LoadImage.validate_inputs({"image": "missing.png"}, services)
    assert LoadImage.validate_inputs({"image": "../x.png"}, services) is not True
    digest = hashlib.sha256((config.input_dir / "sub" / "x.png").read_bytes()).hexdigest()
    assert LoadImage.fingerprint({"image": "sub/x.png"}, services) == digest
    assert LoadImageMask.fingerprint({"image": "sub/x.png", "channel": "red"}, services) == digest


def test_load_image_rereads_a_changed_file(executor, config):
    path = config.input_dir / "c.png"
    Image.new("RGB", (1, 1), (0, 0, 0)).save(path)
    assert float(load(executor, "c.png").max()) == 0.0
    Image.new("RGB", (1, 1), (255, 255, 255)).save(path)
    assert float(load(executor, "c.png").min()) == 1.0


@pytest.mark.parametrize(("channel", "expected"), [
    ("alpha", lambda p: 1.0 - p[..., 3] / 255.0), ("red", lambda p: p[..., 0] / 255.0),
    ("green", lambda p: p[..., 1] / 255.0), ("blue", lambda p: p[..., 2] / 255.0),
])
def test_load_image_mask_channels(executor, config, channel, expected):
    pixels = rgba_pixels()
    Image.fromarray(pixels, "RGBA").save(config.input_dir / "m.png")
    mask = load(executor, "m.png", node="LoadImageMask", channel=channel)
    assert torch.allclose(mask, torch.from_numpy(expected(pixels)).float().unsqueeze(0))


def test_load_image_mask_alpha_of_opaque_image_is_zero(executor, config):
    Image.new("RGB", (3, 2), (9, 9, 9)).save(config.input_dir / "rgb.png")
    assert torch.equal(load(executor, "rgb.png", node="LoadImageMask", channel="alpha"), torch.zeros(1, 2, 3))


# -- bad files -----------------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_header_png(width: int = 100_000, height: int = 100_000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 301)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def truncated_png(tmp_path) -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    return data[: len(data) // 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("node", ["LoadImage", "LoadImageMask"])
@pytest.mark.parametrize(("name", "content", "words"), [
    ("text.png", lambda t: b"this is not an image", "not a readable image"),
    ("empty.png", lambda t: b"", "not a readable image"),
    ("cut.png", truncated_png, "truncated"),
    ("bomb.png", lambda t: huge_header_png(), "too large"),
    ("108mp.png", lambda t: huge_header_png(12_000, 9_000), "too large"),
    ("wide.png", lambda t: huge_header_png(4_000_000_000, 1), "too large"),
])
def test_bad_images_give_clear_errors(executor, config, tmp_path, node, name, content, words):
    (config.input_dir / name).write_bytes(content(tmp_path))
    message = load_error(executor, name, node=node, channel="red" if node == "LoadImageMask" else None)
    assert name in message and words in message


@pytest.mark.parametrize("node", ["LoadImage", "LoadImageMask"])
def test_missing_image_is_a_clear_error(executor, node):
    message = load_error(executor, "nope.png", node=node, channel="alpha" if node == "LoadImageMask" else None)
    assert "nope.png" in message
