"""Names that try to leave the input folder are refused by LoadImage and by the imageio helpers."""

import pytest
import torch
from PIL import Image

from nodes.imageio import UnsafePathError, annotated_path, check_relative_name, resolve_inside, save_target

from .helpers import load, load_error

# Refused by the name rules alone (no filesystem needed).
UNSAFE_NAMES = [
    "../secret.png", "../../secret.png", "../../../../../../etc/passwd", "sub/../../secret.png", "./../secret.png",
    "sub/..", "..", "%2e%2e/secret.png", "%2e%2e%2fsecret.png", "%252e%252e%252fsecret.png", "..%2fsecret.png",
    ".%2e/secret.png", "%2e%2e%5csecret.png", "/etc/passwd", "//etc/passwd", "%2Fetc%2Fpasswd",
    "C:\\Windows\\win.ini", "C:/Windows/win.ini", "c:secret.png", "..\\secret.png", "sub\\..\\..\\secret.png",
    "\\\\server\\share\\x.png", "secret.png\x00.png", "\x00", "..%00/secret.png", "%00secret.png",
    "../secret.png [input]", "../secret.png [output]", "../../secret.png [temp]", "/etc/passwd [output]", "",
    " ",
]
# Harmless literal names that merely do not exist here.
ODD_BUT_CONTAINED = ["..;/secret.png", "....//secret.png", "secret.png/.", "sub/./../sub/x.png"]
SYMLINK_NAMES = ["escape_file.png", "escape_dir/secret.png", "sub/escape_file.png", "escape_file.png [input]"]


@pytest.fixture
def planted(config, tmp_path_factory):
    """A readable image outside input/, reachable only through traversal or escaping symlinks."""
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (2, 2), (255, 255, 255)).save(outside / "secret.png")
    for folder in (config.base_dir, config.output_dir):
        Image.new("RGB", (2, 2), (255, 255, 255)).save(folder / "secret.png")
    (config.input_dir / "sub").mkdir()
    (config.input_dir / "escape_file.png").symlink_to(outside / "secret.png")
    (config.input_dir / "sub" / "escape_file.png").symlink_to(outside / "secret.png")
    (config.input_dir / "escape_dir").symlink_to(outside, target_is_directory=True)
    return outside


def test_payload_count():
    assert len(UNSAFE_NAMES) + len(SYMLINK_NAMES) + len(ODD_BUT_CONTAINED) >= 30


@pytest.mark.parametrize("name", UNSAFE_NAMES + SYMLINK_NAMES + ODD_BUT_CONTAINED)
def test_load_image_refuses(executor, planted, name):
    message = load_error(executor, name)
    assert message  # a clear error, never the secret's pixels


@pytest.mark.parametrize("name", UNSAFE_NAMES[:12] + SYMLINK_NAMES[:2])
def test_load_image_mask_refuses(executor, planted, name):
    assert load_error(executor, name, node="LoadImageMask", channel="red")


@pytest.mark.parametrize("name", UNSAFE_NAMES + SYMLINK_NAMES)
def test_annotated_path_refuses(registry, planted, name):
    with pytest.raises(UnsafePathError):
        annotated_path(registry.services, name)


@pytest.mark.parametrize("name", [n for n in UNSAFE_NAMES if " [" not in n])
def test_name_rules_refuse(name):
    with pytest.raises(UnsafePathError):
        check_relative_name(name)


def test_resolve_inside_refuses_escaping_symlink_and_allows_inner_one(config, planted):
    Image.new("RGB", (3, 1), (0, 0, 0)).save(config.input_dir / "sub" / "real.png")
    (config.input_dir / "inner_link.png").symlink_to(config.input_dir / "sub" / "real.png")
    assert resolve_inside(config.input_dir, "inner_link.png").is_file()
    with pytest.raises(UnsafePathError):
        resolve_inside(config.input_dir, "escape_dir/secret.png")


def test_inner_symlink_loads(executor, config, planted):
    Image.new("RGB", (3, 1), (0, 0, 0)).save(config.input_dir / "sub" / "real.png")
    (config.input_dir / "inner_link.png").symlink_to(config.input_dir / "sub" / "real.png")
    assert torch.equal(load(executor, "inner_link.png"), torch.zeros(1, 1, 3, 3))


@pytest.mark.parametrize("prefix", ["../x", "/abs/x", "a/../../x", "..\\x", "x\x00", "%2e%2e/x/../../../y"])
def test_save_target_refuses(config, prefix):
    with pytest.raises(UnsafePathError):
        save_target(config.output_dir, prefix, 1, 1)
