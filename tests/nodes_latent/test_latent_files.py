"""SaveLatent → LoadLatent through the executor: ComfyUI's .latent layout on disk, naming, legacy scaling, path
escapes refused."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .conftest import lat, ramp


def save(executor, samples: torch.Tensor, prefix: str = "latents/ComfyUI"):
    prompt = {"a": lat(samples), "save": {"class_type": "SaveLatent",
                                          "inputs": {"samples": ["a", 0], "filename_prefix": prefix}}}
    return executor.execute(prompt, extra_data={"extra_pnginfo": {"workflow": {"id": "w"}}})


def test_save_writes_comfyuis_latent_file_and_load_reads_it_back(executor, config, run):
    samples = ramp(2, 4, 3, 5)
    result = save(executor, samples)
    assert result.ok, result.error
    entry = result.outputs["save"]["latents"][0]
    assert entry == {"filename": "ComfyUI_00001_.latent", "subfolder": "latents", "type": "output"}
    path = config.output_dir / "latents" / "ComfyUI_00001_.latent"
    with safe_open(str(path), "pt") as handle:
        assert set(handle.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert torch.equal(handle.get_tensor("latent_tensor"), samples)
        metadata = handle.metadata()
    assert json.loads(metadata["prompt"])["save"]["class_type"] == "SaveLatent"
    assert json.loads(metadata["workflow"]) == {"id": "w"}
    again = save(executor, samples * 2)
    assert again.outputs["save"]["latents"][0]["filename"] == "ComfyUI_00002_.latent"

    (config.input_dir / "kept.latent").write_bytes(path.read_bytes())
    loaded = run("LoadLatent", {"latent": "kept.latent"})
    assert set(loaded) == {"samples"} and torch.equal(loaded["samples"], samples)
    from_output = run("LoadLatent", {"latent": "latents/ComfyUI_00002_.latent [output]"})
    assert torch.equal(from_output["samples"], samples * 2)


def test_load_lists_latent_files_and_unscales_legacy_ones(registry, config, run):
    save_file({"latent_tensor": torch.full((1, 4, 2, 2), 0.18215)}, str(config.input_dir / "old.latent"))
    (config.input_dir / "notes.txt").write_text("x")
    options = registry.object_info()["LoadLatent"]["input"]["required"]["latent"][0]
    assert options == ["old.latent"]
    loaded = run("LoadLatent", {"latent": "old.latent"})
    assert torch.allclose(loaded["samples"], torch.ones(1, 4, 2, 2))


@pytest.mark.parametrize("name", ["../escape.latent", "/etc/passwd", "..%2Fescape.latent", "missing.latent"])
def test_load_refuses_escapes_and_missing_files(failure, config, name):
    (config.input_dir.parent / "escape.latent").write_bytes(b"")
    errors = failure("LoadLatent", {"latent": name})
    assert errors[0]["type"] == "custom_validation_failed"
    assert "Invalid latent file" in errors[0]["details"]


def test_load_refuses_a_file_without_latent_tensor(failure, config):
    save_file({"other": torch.zeros(1)}, str(config.input_dir / "wrong.latent"))
    assert "no 'latent_tensor'" in failure("LoadLatent", {"latent": "wrong.latent"})
    (config.input_dir / "junk.latent").write_bytes(b"not safetensors")
    assert "not a readable .latent" in failure("LoadLatent", {"latent": "junk.latent"})


@pytest.mark.parametrize("prefix", ["../outside", "/tmp/abs", "a/../../outside"])
def test_save_refuses_prefixes_leaving_the_output_folder(executor, config, prefix):
    result = save(executor, ramp(1, 4, 1, 1), prefix)
    assert not result.ok and "outside the output folder" in result.error["exception_message"]
    assert not list(config.output_dir.parent.glob("outside*")) and not list(config.output_dir.rglob("*.latent"))


def test_load_estimate_is_the_file_size_and_none_for_a_bad_name(registry, config):
    from nodes.latent_files import LoadLatent

    save_file({"latent_tensor": torch.zeros(2, 4, 8, 8), "latent_format_version_0": torch.tensor([])},
              str(config.input_dir / "big.latent"))
    estimate = LoadLatent.estimate({"latent": "big.latent"}, {}, registry.services)
    assert estimate.output_bytes == (config.input_dir / "big.latent").stat().st_size >= 2 * 4 * 8 * 8 * 4
    assert LoadLatent.estimate({"latent": "../big.latent"}, {}, registry.services) is None
