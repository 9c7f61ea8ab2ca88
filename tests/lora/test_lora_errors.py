"""Bad and foreign LoRA files: unmatched keys reported by name, corrupt and pickle-only files refused naming the
file, a LoRA of another family refused naming the file and both families; diffusers' own converter as an oracle
for the kohya name mapping."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers.loaders.lora_conversion_utils import (
    _convert_non_diffusers_lora_to_diffusers,
    _maybe_map_sgm_blocks_to_diffusers,
)
from safetensors.torch import save_file

from nodes.lora import LoraError, LoraMismatchError, load_lora, load_lora_file, match_lora
from nodes.models.errors import ModelFileError
from tests.lora.layouts import SD15_NAMES, SDXL_NAMES, TE_Q, Writer, live_clip_name, underscored
from tests.lora.test_lora_formats import LDM, DIFFUSERS, sdxl_kohya


def _sd15_lora(targets, seed=0) -> Writer:
    w = Writer(targets, seed=seed)
    for name in ("attn1_q", "mid_k"):
        w.lora(underscored("lora_unet_", SD15_NAMES[name][LDM]), "unet", SD15_NAMES[name][DIFFUSERS])
    w.lora(underscored("lora_te_", TE_Q), "te1", live_clip_name(targets["te1"], TE_Q))
    return w


def test_unmatched_keys_are_reported_by_name_and_the_rest_applies(sd15):
    w = _sd15_lora(sd15)
    extra = {
        "lora_unet_input_blocks_99_1_proj_in.lora_up.weight": torch.zeros(4, 4),  # no such module
        "lora_unet_input_blocks_99_1_proj_in.lora_down.weight": torch.zeros(4, 4),
        "lora_te_text_model_encoder_layers_7_mlp_fc1.alpha": torch.tensor(1.0),
        "lora_unet_input_blocks_1_1_proj_out.lora_up.weight": torch.zeros(32, 4, 1, 1),  # no down factor
        "lora_unet_input_blocks_1_1_proj_in.w_norm": torch.zeros(32),  # a part we do not know
        "some.other.tensor": torch.zeros(1),
        # a DoRA module is reported whole rather than applied without its magnitude rescaling
        "lora_unet_output_blocks_3_1_proj_out.lora_up.weight": torch.zeros(64, 4, 1, 1),
        "lora_unet_output_blocks_3_1_proj_out.lora_down.weight": torch.zeros(4, 64, 1, 1),
        "lora_unet_output_blocks_3_1_proj_out.dora_scale": torch.ones(64, 1, 1, 1),
    }
    match = match_lora({**w.sd, **extra}, sd15, "sd15", source="styles/mixed.safetensors")
    assert match.unmatched == sorted(extra)
    assert match.why["lora_unet_output_blocks_3_1_proj_out.dora_scale"] == "DoRA (dora_scale) is not supported"
    assert "missing down" in match.why["lora_unet_input_blocks_1_1_proj_out.lora_up.weight"]
    assert match.why["some.other.tensor"] == "not a known LoRA part"
    assert match.skipped == []
    assert sorted(match.keys_used()) == sorted(w.sd)
    assert match.source == "mixed.safetensors"


def test_model_only_load_skips_text_encoder_keys_without_reporting_them(sd15):
    w = _sd15_lora(sd15)
    match = match_lora(w.sd, {"unet": sd15["unet"]}, "sd15")
    assert match.skipped == sorted(k for k in w.sd if k.startswith("lora_te_"))
    assert match.unmatched == []
    assert set(match.patches) == {"unet"}


def test_sdxl_lora_on_sd15_names_the_file_and_both_families(sd15, sdxl, tmp_path):
    w = Writer(sdxl, seed=1)
    sdxl_kohya(w)
    path = tmp_path / "xl_style.safetensors"
    save_file(w.sd, str(path))
    with pytest.raises(LoraMismatchError, match=r"xl_style\.safetensors.*sd15.*SDXL.*lora_te2_"):
        load_lora(path, sd15, "sd15")


def test_unet_only_lora_of_another_family_fails_on_shapes(sd15, sdxl, tmp_path):
    w = Writer(sdxl, seed=2)
    w.lora(underscored("lora_unet_", SDXL_NAMES["mid_k"][LDM]), "unet", SDXL_NAMES["mid_k"][DIFFUSERS])
    path = tmp_path / "xl_unet.safetensors"
    save_file(w.sd, str(path))
    with pytest.raises(LoraMismatchError) as info:
        load_lora(path, sd15, "sd15")
    message = str(info.value)
    assert "xl_unet.safetensors" in message and "sd15" in message
    assert "cross-attention width 96" in message and "mid_block.attentions.0.transformer_blocks.0.attn2.to_k" in message
    # and the other way round: an SD1.5 LoRA on the SDXL model
    path = tmp_path / "sd15_style.pt"
    torch.save(_sd15_lora(sd15).sd, path)
    with pytest.raises(LoraMismatchError, match=r"sd15_style\.pt.*sdxl.*width 32"):
        load_lora(path, sdxl, "sdxl")


def test_weights_only_pickle_loads_and_other_pickles_are_refused(sd15, tmp_path, monkeypatch):
    w = _sd15_lora(sd15)
    torch.save(w.sd, tmp_path / "plain.pt")
    assert load_lora_file(tmp_path / "plain.pt").keys() == w.sd.keys()

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch pwned_by_lora",))

    monkeypatch.chdir(tmp_path)
    torch.save({**w.sd, "payload": Exploit()}, tmp_path / "evil.ckpt")
    with pytest.raises(ModelFileError, match=r"evil\.ckpt.*refused"):
        load_lora_file(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned_by_lora").exists()


def test_corrupt_and_foreign_files_fail_naming_the_file(sd15, tmp_path):
    save_file(_sd15_lora(sd15).sd, str(tmp_path / "good.safetensors"))
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    for name in ("cut.safetensors", "noise.safetensors"):
        with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
            load_lora(tmp_path / name, sd15, "sd15")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(LoraError, match=r"ckpt\.safetensors: not a LoRA file"):
        load_lora_file(tmp_path / "ckpt.safetensors")
    save_file({"transformer.single_blocks.0.linear1.lora_A.weight": torch.zeros(2, 2)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(LoraError, match=r"flux\.safetensors: no LoRA key matches"):
        load_lora(tmp_path / "flux.safetensors", sd15, "sd15")


def test_kohya_names_agree_with_diffusers_own_converter(sdxl):
    """diffusers converts kohya SDXL keys (LDM block names) to its attention-processor form; matching that output
    must patch the same modules with the same factors as matching the kohya file directly."""
    w = Writer(sdxl, seed=3)
    for name in ("deep_k", "proj_out", "skip", "upsampler", "label", "mid_k"):
        w.lora(underscored("lora_unet_", SDXL_NAMES[name][LDM]), "unet", SDXL_NAMES[name][DIFFUSERS], alpha=None)
    direct = match_lora(dict(w.sd), sdxl, "sdxl")
    remapped = _maybe_map_sgm_blocks_to_diffusers(dict(w.sd), sdxl["unet"].config)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(remapped)
    assert alphas == {}
    via_diffusers = match_lora(converted, sdxl, "sdxl")
    assert via_diffusers.unmatched == [] and direct.unmatched == []
    assert direct.patches["unet"].keys() == via_diffusers.patches["unet"].keys()
    assert set(direct.patches["unet"]) == {SDXL_NAMES[n][DIFFUSERS] for n in SDXL_NAMES}
    for module, patch in direct.patches["unet"].items():
        other = via_diffusers.patches["unet"][module]
        assert all(torch.equal(patch.tensors[p], other.tensors[p]) for p in ("up", "down"))
