"""Each LoRA file format, written in its real key layout with random weights: detected, matched onto the live
modules, applied at strength 1 equal to the hand-merged reference, and restored bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

from nodes.lora import detect_format, load_lora_file, match_lora, patched_weights
from tests.lora.layouts import SD15_NAMES, SDXL_NAMES, TE_FC1, TE_Q, Writer, live_clip_name, underscored

LDM, DIFFUSERS = 0, 1


def sd1(name: str, style: int) -> str:
    return SD15_NAMES[name][style]


def xl(name: str, style: int) -> str:
    return SDXL_NAMES[name][style]


def te(w: Writer, slot: str, path: str) -> str:
    return live_clip_name(w.targets[slot], path)


def kohya_sd1_diffusers_names(w: Writer):
    for name in ("attn1_q", "proj_in", "ff"):
        w.lora(underscored("lora_unet_", sd1(name, DIFFUSERS)), "unet", sd1(name, DIFFUSERS), rank=4, alpha=2.0)
    w.lora(underscored("lora_te_", TE_Q), "te1", te(w, "te1", TE_Q), rank=2, alpha=1.0)
    w.lora(underscored("lora_te_", TE_FC1), "te1", te(w, "te1", TE_FC1), rank=4, alpha=None)


def kohya_ldm_names(w: Writer):
    for name in ("attn1_out", "mid_k", "proj_out", "time", "skip"):
        w.lora(underscored("lora_unet_", sd1(name, LDM)), "unet", sd1(name, DIFFUSERS), rank=3, alpha=1.5)


def locon(w: Writer):
    w.lora(underscored("lora_unet_", sd1("conv1", LDM)), "unet", sd1("conv1", DIFFUSERS), rank=4, alpha=4.0)
    w.lora(underscored("lora_unet_", sd1("out_conv2", LDM)), "unet", sd1("out_conv2", DIFFUSERS), rank=4, mid=True)
    w.lora(underscored("lora_unet_", sd1("downsampler", LDM)), "unet", sd1("downsampler", DIFFUSERS), rank=2, mid=True)
    w.lora(underscored("lora_unet_", sd1("attn1_q", LDM)), "unet", sd1("attn1_q", DIFFUSERS), rank=8, alpha=1.0)


def loha(w: Writer):
    w.loha(underscored("lora_unet_", sd1("attn1_q", LDM)), "unet", sd1("attn1_q", DIFFUSERS))
    w.loha(underscored("lora_unet_", sd1("conv1_b1", LDM)), "unet", sd1("conv1_b1", DIFFUSERS), tucker=True)
    w.loha(underscored("lora_unet_", sd1("upsampler", LDM)), "unet", sd1("upsampler", DIFFUSERS), rank=2)
    w.loha(underscored("lora_te_", TE_FC1), "te1", te(w, "te1", TE_FC1), rank=2, alpha=1.0)


def lokr(w: Writer):
    w.lokr(underscored("lora_unet_", sd1("ff", LDM)), "unet", sd1("ff", DIFFUSERS), split=(8, 4))
    w.lokr(underscored("lora_unet_", sd1("mid_k", LDM)), "unet", sd1("mid_k", DIFFUSERS), split=(4, 2),
           w1_decomposed=True, w2_decomposed=False, alpha=3.0)
    w.lokr(underscored("lora_unet_", sd1("conv1", LDM)), "unet", sd1("conv1", DIFFUSERS), split=(4, 4), tucker=True)
    w.lokr(underscored("lora_unet_", sd1("out_conv2", LDM)), "unet", sd1("out_conv2", DIFFUSERS), split=(8, 8))
    w.lokr(underscored("lora_te_", TE_Q), "te1", te(w, "te1", TE_Q), split=(2, 2), w2_decomposed=False, alpha=8.0)


def full_diff(w: Writer):
    w.diff(underscored("lora_unet_", sd1("proj_in", LDM)), "unet", sd1("proj_in", DIFFUSERS))
    w.diff(underscored("lora_unet_", sd1("norm", LDM)), "unet", sd1("norm", DIFFUSERS))
    w.diff(underscored("lora_te_", TE_Q), "te1", te(w, "te1", TE_Q), bias=False)


def peft(w: Writer):
    for name in ("attn1_q", "proj_in", "skip"):
        w.lora(f"unet.{sd1(name, DIFFUSERS)}", "unet", sd1(name, DIFFUSERS), alpha=None, style="peft")
    w.lora(f"text_encoder.{TE_Q}", "te1", te(w, "te1", TE_Q), alpha=None, style="peft")


def diffusers_attention_processors(w: Writer):
    q, out = sd1("attn1_q", DIFFUSERS), sd1("attn1_out", DIFFUSERS)
    w.lora(f"unet.{q.rsplit('.', 1)[0]}.processor.to_q_lora", "unet", q, alpha=None, style="bare")
    w.lora(f"unet.{out.rsplit('.', 2)[0]}.processor.to_out_lora", "unet", out, alpha=None, style="bare")
    w.lora(f"text_encoder.{TE_FC1}.lora_linear_layer", "te1", te(w, "te1", TE_FC1), alpha=None, style="bare")


def comfyui_lorasave(w: Writer):
    w.lora(f"diffusion_model.{sd1('proj_in', LDM)}", "unet", sd1("proj_in", DIFFUSERS), alpha=None)
    w.diff(f"diffusion_model.{sd1('proj_in', LDM)}", "unet", sd1("proj_in", DIFFUSERS), weight=False)
    w.diff(f"diffusion_model.{sd1('norm', LDM)}", "unet", sd1("norm", DIFFUSERS))
    w.lora(f"diffusion_model.{sd1('upsampler', LDM)}", "unet", sd1("upsampler", DIFFUSERS), alpha=None)
    w.lora(f"text_encoders.clip_l.transformer.{TE_Q}", "te1", te(w, "te1", TE_Q), alpha=None)


def sd2_kohya(w: Writer):
    """SD2: linear proj_in/proj_out, OpenCLIP-H text encoder in transformers layout (same LDM block names as SD1)."""
    for name in ("proj_in", "proj_out", "mid_k"):
        w.lora(underscored("lora_unet_", sd1(name, LDM)), "unet", sd1(name, DIFFUSERS), alpha=4.0)
    w.lora(underscored("lora_te_", TE_FC1), "te1", te(w, "te1", TE_FC1), alpha=4.0)


def sd2_comfyui(w: Writer):
    w.lora(f"diffusion_model.{sd1('ff', LDM)}", "unet", sd1("ff", DIFFUSERS), alpha=None)
    w.lora(f"text_encoders.clip_h.transformer.{TE_Q}", "te1", te(w, "te1", TE_Q), alpha=None)


def sdxl_kohya(w: Writer):
    for name in ("deep_k", "label", "proj_out", "skip", "upsampler"):
        w.lora(underscored("lora_unet_", xl(name, LDM)), "unet", xl(name, DIFFUSERS), rank=4, alpha=1.0)
    w.lora(underscored("lora_te1_", TE_Q), "te1", te(w, "te1", TE_Q), alpha=1.0)
    w.lora(underscored("lora_te2_", TE_Q), "te2", TE_Q, alpha=1.0)
    w.lora("lora_te2_text_projection", "te2", "text_projection", alpha=1.0)


def sdxl_comfyui(w: Writer):
    w.lora(f"diffusion_model.{xl('mid_k', LDM)}", "unet", xl("mid_k", DIFFUSERS), alpha=None)
    w.lora(f"text_encoders.clip_l.transformer.{TE_FC1}", "te1", te(w, "te1", TE_FC1), alpha=None)
    w.lora(f"text_encoders.clip_g.transformer.{TE_FC1}", "te2", TE_FC1, alpha=None)


def sdxl_peft(w: Writer):
    w.lora(f"unet.{xl('deep_k', DIFFUSERS)}", "unet", xl("deep_k", DIFFUSERS), alpha=None, style="peft")
    w.lora(f"text_encoder_2.{TE_Q}", "te2", TE_Q, alpha=None, style="peft")


@dataclass(frozen=True)
class Case:
    build: Callable[[Writer], None]
    family: str
    naming: str
    kinds: frozenset[str]
    peft: bool = False


def case(build, family, naming, *kinds, peft=False):
    return pytest.param(Case(build, family, naming, frozenset(kinds), peft), id=build.__name__)


CASES = [
    case(kohya_sd1_diffusers_names, "sd15", "kohya", "lora"),
    case(kohya_ldm_names, "sd15", "kohya", "lora"),
    case(locon, "sd15", "kohya", "locon"),
    case(loha, "sd15", "kohya", "loha"),
    case(lokr, "sd15", "kohya", "lokr"),
    case(full_diff, "sd15", "kohya", "diff"),
    case(peft, "sd15", "diffusers", "lora", peft=True),
    case(diffusers_attention_processors, "sd15", "diffusers", "lora"),
    case(comfyui_lorasave, "sd15", "comfyui", "locon", "diff"),
    case(sd2_kohya, "sd2", "kohya", "lora"),
    case(sd2_comfyui, "sd2", "comfyui", "lora"),
    case(sdxl_kohya, "sdxl", "kohya", "locon"),
    case(sdxl_comfyui, "sdxl", "comfyui", "lora"),
    case(sdxl_peft, "sdxl", "diffusers", "lora", peft=True),
]


def assert_pristine(targets, pristine, skip=()):
    for slot, module in targets.items():
        for key, value in module.state_dict().items():
            if (slot, key) not in skip:
                assert torch.equal(value, pristine[slot][key]), f"{slot} {key} changed"


@pytest.mark.parametrize("spec", CASES)
def test_format_applies_as_hand_merged_reference(spec: Case, sd15, sd2, sdxl, pristine, tmp_path):
    targets, base = {"sd15": sd15, "sd2": sd2, "sdxl": sdxl}[spec.family], pristine[spec.family]
    writer = Writer(targets, seed=len(spec.build.__name__))
    spec.build(writer)
    path = tmp_path / f"{spec.build.__name__}.safetensors"
    save_file(writer.sd, str(path))

    state_dict = load_lora_file(path)
    fmt = detect_format(state_dict)
    assert (fmt.naming, fmt.kinds, fmt.peft) == (spec.naming, spec.kinds, spec.peft)
    match = match_lora(state_dict, targets, spec.family, source=path)
    assert match.unmatched == [] and match.skipped == []
    touched = {(slot, f"{module}.{param}") for slot, module, param in writer.expected.deltas}
    assert len(match.keys_used()) == len(state_dict)

    with patched_weights(targets, [(match.patches, 1.0)]):
        for (slot, module, param), delta in writer.expected.deltas.items():
            live = getattr(targets[slot].get_submodule(module), param)
            reference = base[slot][f"{module}.{param}"] + delta
            torch.testing.assert_close(live.detach(), reference, rtol=1e-5, atol=1e-6)
            assert not torch.equal(live, base[slot][f"{module}.{param}"])
        assert_pristine(targets, base, skip=touched)
    assert_pristine(targets, base)
