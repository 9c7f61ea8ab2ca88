"""`folder_paths` against real folders: listing, resolution (never outside a folder), annotated names, save paths."""

from __future__ import annotations

import os

import pytest

from nodes.comfy_compat import folder_paths as folder_paths_shim
from nodes.imageio import UnsafePathError
from nodes.services import Services
from graphengine import RuntimeConfig


@pytest.fixture()
def fp(tmp_path):
    models = tmp_path / "models"
    (models / "loras" / "style").mkdir(parents=True)
    (models / "loras" / "style" / "ink.safetensors").write_bytes(b"0")
    (models / "loras" / "notes.txt").write_text("not a model")
    (tmp_path / "outside.safetensors").write_bytes(b"0")
    os.symlink(tmp_path / "outside.safetensors", models / "loras" / "escape.safetensors")
    for name in ("input", "output", "temp"):
        (tmp_path / name).mkdir()
    (tmp_path / "input" / "in.png").write_bytes(b"png")
    (tmp_path / "output" / "out.png").write_bytes(b"png")
    return folder_paths_shim.build(Services(config=RuntimeConfig(base_dir=tmp_path)))


def test_lists_and_resolves_model_files_inside_their_folder(fp, tmp_path):
    assert fp.get_filename_list("loras") == ["style/ink.safetensors"]
    assert fp.get_full_path("loras", "style/ink.safetensors") == str(tmp_path / "models/loras/style/ink.safetensors")
    assert fp.get_full_path("loras", "missing.safetensors") is None
    assert fp.get_full_path("loras", "../../outside.safetensors") is None
    assert fp.get_full_path("loras", "escape.safetensors") is None  # a symlink out of the folder
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        fp.get_full_path_or_raise("loras", "missing.safetensors")
    assert fp.get_folder_paths("loras") == [str(tmp_path / "models" / "loras")]
    assert fp.get_folder_paths("clip") == fp.get_folder_paths("text_encoders")
    with pytest.raises(KeyError):
        fp.get_filename_list("no_such_folder")


def test_add_model_folder_path_and_the_folder_view(fp, tmp_path):
    extra = tmp_path / "extra_ipadapter"
    extra.mkdir()
    (extra / "ip.bin").write_bytes(b"0")
    fp.add_model_folder_path("ipadapter", str(extra))
    assert fp.get_filename_list("ipadapter") == ["ip.bin"]
    assert fp.get_full_path("ipadapter", "ip.bin") == str(extra / "ip.bin")
    first = tmp_path / "first_loras"
    first.mkdir()
    fp.add_model_folder_path("loras", str(first), is_default=True)
    paths, extensions = fp.folder_names_and_paths["loras"]
    assert paths[0] == str(first) and ".safetensors" in extensions
    assert "ipadapter" in fp.folder_names_and_paths and "clip" in fp.folder_names_and_paths
    other = tmp_path / "other"
    other.mkdir()
    fp.folder_names_and_paths["animatediff_models"] = ([str(other)], fp.supported_pt_extensions)
    assert fp.get_folder_paths("animatediff_models") == [str(other)]
    with pytest.raises(TypeError):
        del fp.folder_names_and_paths["loras"]


def test_directories_and_module_values(fp, tmp_path):
    assert fp.get_input_directory() == str(tmp_path / "input")
    assert fp.get_output_directory() == str(tmp_path / "output")
    assert fp.get_temp_directory() == str(tmp_path / "temp")
    assert fp.get_directory_by_type("output") == str(tmp_path / "output")
    assert fp.get_directory_by_type("elsewhere") is None
    assert fp.models_dir == str(tmp_path / "models") and fp.base_path == str(tmp_path)
    assert fp.output_directory == fp.get_output_directory()
    assert {".safetensors", ".ckpt", ".pt"} <= fp.supported_pt_extensions
    assert fp.filter_files_extensions(["a.png", "b.safetensors", "c.PT"], [".safetensors", ".pt"]) == \
        ["b.safetensors", "c.PT"]
    with pytest.raises(AttributeError, match="set_output_directory.*compatibility layer"):
        fp.set_output_directory("/tmp")


def test_annotated_paths_stay_inside_their_folder(fp, tmp_path):
    assert fp.get_annotated_filepath("in.png") == str(tmp_path / "input" / "in.png")
    assert fp.get_annotated_filepath("out.png [output]") == str(tmp_path / "output" / "out.png")
    assert fp.annotated_filepath("x.png [temp]") == ("x.png", str(tmp_path / "temp"))
    assert fp.exists_annotated_filepath("out.png [output]")
    assert not fp.exists_annotated_filepath("out.png")  # not in input/
    assert not fp.exists_annotated_filepath("../models/loras/style/ink.safetensors")
    with pytest.raises(UnsafePathError):
        fp.get_annotated_filepath("../outside.safetensors [output]")


def test_save_image_path_counts_on_from_existing_files(fp, tmp_path):
    out = fp.get_output_directory()
    folder, filename, counter, subfolder, prefix = fp.get_save_image_path("shots/pic_%width%", out, 64, 32)
    assert (folder, filename, counter, subfolder, prefix) == (str(tmp_path / "output/shots"), "pic_64", 1,
                                                              "shots", "shots/pic_64")
    (tmp_path / "output/shots/pic_64_00007_.png").write_bytes(b"png")
    assert fp.get_save_image_path("shots/pic_%width%", out, 64, 32)[2] == 8
    with pytest.raises(UnsafePathError):
        fp.get_save_image_path("../escape", out)
