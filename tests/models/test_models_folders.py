"""Models-folder layout: listing, aliases, extra search paths from YAML, and contained name resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodes.models import ModelFolders, ModelNotFound, UnsafeModelPath


def _touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def models(tmp_path) -> Path:
    root = tmp_path / "models"
    _touch(root / "checkpoints" / "b.safetensors")
    _touch(root / "checkpoints" / "SDXL" / "a.ckpt")
    _touch(root / "checkpoints" / "notes.txt")
    _touch(root / "checkpoints" / ".hidden" / "h.safetensors")
    _touch(root / "checkpoints" / "pipe" / "model_index.json", b"{}")
    _touch(root / "checkpoints" / "pipe" / "unet" / "inner.safetensors")
    _touch(root / "clip" / "clip_l.safetensors")
    _touch(root / "text_encoders" / "t5.sft")
    _touch(root / "unet" / "u.pth")
    _touch(root / "configs" / "v1.yaml")
    _touch(root / "configs" / "v1.safetensors")
    _touch(root / "diffusers" / "sd15" / "model_index.json", b"{}")
    _touch(root / "diffusers" / "loose.safetensors")
    return root


def test_listing(models):
    folders = ModelFolders(models)
    assert folders.list("checkpoints") == ["SDXL/a.ckpt", "b.safetensors", "pipe"]
    assert folders.list("clip") == folders.list("text_encoders") == ["clip_l.safetensors", "t5.sft"]
    assert folders.list("unet") == folders.list("diffusion_models") == ["u.pth"]
    assert folders.list("configs") == ["v1.yaml"]
    assert folders.list("diffusers") == ["sd15"]
    assert folders.list("loras") == []
    with pytest.raises(KeyError, match="unknown model folder"):
        folders.list("nope")


def test_resolve(models):
    folders = ModelFolders(models)
    assert folders.resolve("checkpoints", "SDXL/a.ckpt") == (models / "checkpoints" / "SDXL" / "a.ckpt").resolve()
    assert folders.resolve("checkpoints", "SDXL\\a.ckpt") == folders.resolve("checkpoints", "SDXL/a.ckpt")
    assert folders.resolve("checkpoints", "pipe").is_dir()
    assert folders.resolve("clip", "t5.sft").name == "t5.sft"
    with pytest.raises(ModelNotFound, match="missing.safetensors"):
        folders.resolve("checkpoints", "missing.safetensors")
    with pytest.raises(ModelNotFound):
        folders.resolve("checkpoints", "notes.txt")  # exists, but not a model extension


@pytest.mark.parametrize("name", [
    "../secret.safetensors", "SDXL/../../secret.safetensors", "..\\secret.safetensors", "/etc/passwd",
    "\\\\server\\share\\x.safetensors", "C:\\models\\x.safetensors", "c:x.safetensors", "a\x00.safetensors",
    "", "  ", ".", "./",
])
def test_traversal_payloads_are_refused(models, name):
    _touch(models / "secret.safetensors")
    with pytest.raises(UnsafeModelPath):
        ModelFolders(models).resolve("checkpoints", name)


def test_symlink_escape_is_refused_and_not_listed(models, tmp_path):
    outside = _touch(tmp_path / "outside" / "stolen.safetensors")
    os.symlink(outside, models / "checkpoints" / "link.safetensors")
    os.symlink(outside.parent, models / "checkpoints" / "linkdir")
    os.symlink(models / "checkpoints" / "b.safetensors", models / "checkpoints" / "inner_link.safetensors")
    folders = ModelFolders(models)
    assert "link.safetensors" not in folders.list("checkpoints")
    assert "linkdir/stolen.safetensors" not in folders.list("checkpoints")
    assert "inner_link.safetensors" in folders.list("checkpoints")
    for name in ("link.safetensors", "linkdir/stolen.safetensors"):
        with pytest.raises(UnsafeModelPath, match="outside"):
            folders.resolve("checkpoints", name)
    target = (models / "checkpoints" / "b.safetensors").resolve()
    assert folders.resolve("checkpoints", "inner_link.safetensors") == target


def test_symlink_loop_does_not_hang(models):
    os.symlink(models / "checkpoints", models / "checkpoints" / "SDXL" / "loop")
    assert "SDXL/a.ckpt" in ModelFolders(models).list("checkpoints")


def test_extra_paths_from_yaml_and_constructor(models, tmp_path):
    a1111 = tmp_path / "a1111"
    _touch(a1111 / "models" / "Stable-diffusion" / "webui.safetensors")
    _touch(a1111 / "models" / "Stable-diffusion" / "b.safetensors")
    _touch(a1111 / "models" / "Lora" / "style.safetensors")
    _touch(a1111 / "models" / "VAE" / "vae.pt")
    _touch(tmp_path / "shared_clip" / "g.safetensors")
    _touch(tmp_path / "extra_unet" / "x.safetensors")
    config = tmp_path / "cfg" / "extra_model_paths.yaml"
    config.parent.mkdir()
    config.write_text(
        "a111:\n"
        "    base_path: ../a1111/\n"
        "    checkpoints: models/Stable-diffusion\n"
        "    vae: models/VAE\n"
        "    loras: |\n"
        "         models/Lora\n"
        "         models/LyCORIS\n"
        "first:\n"
        "    is_default: true\n"
        "    clip: ../shared_clip\n"
    )
    folders = ModelFolders(models, extra_paths={"unet": tmp_path / "extra_unet"}, extra_config_files=[config])
    assert folders.list("checkpoints") == ["SDXL/a.ckpt", "b.safetensors", "pipe", "webui.safetensors"]
    assert folders.list("loras") == ["style.safetensors"]
    assert folders.list("vae") == ["vae.pt"]
    assert folders.list("diffusion_models") == ["u.pth", "x.safetensors"]
    assert folders.paths("text_encoders")[0] == config.parent / "../shared_clip"  # is_default: searched first
    assert "g.safetensors" in folders.list("clip")
    # the first search path holding a name wins
    assert folders.resolve("checkpoints", "b.safetensors") == (models / "checkpoints" / "b.safetensors").resolve()
    with pytest.raises(UnsafeModelPath):
        folders.resolve("loras", "../VAE/vae.pt")
