"""Patching in place: strength 0 is the base bit for bit, stacked LoRAs add up, restore is exact (also after
errors), half-precision weights, and a patched UNet computes what a hand-merged copy computes."""

from __future__ import annotations

import copy

import pytest
import torch

from nodes.lora import match_lora, patched_weights
from tests.lora.layouts import SD15_NAMES, TE_Q, Writer, live_clip_name, underscored
from tests.lora.test_lora_formats import assert_pristine


def _kohya(targets, seed: int, names=("attn1_q", "proj_in", "conv1", "mid_k")) -> Writer:
    w = Writer(targets, seed=seed)
    for name in names:
        ldm, diffusers = SD15_NAMES[name]
        w.lora(underscored("lora_unet_", ldm), "unet", diffusers, rank=4, alpha=2.0)
    w.lora(underscored("lora_te_", TE_Q), "te1", live_clip_name(targets["te1"], TE_Q), rank=2, alpha=1.0)
    return w


def _unet_out(unet: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=context).sample


def _te_out(te: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return te(torch.tensor([[1, 320, 125, 2]])).last_hidden_state


def test_strength_zero_is_bit_exact_and_restore_is_exact(sd15, pristine):
    match = match_lora(_kohya(sd15, 1).sd, sd15, "sd15")
    base_unet, base_te = _unet_out(sd15["unet"]), _te_out(sd15["te1"])
    with patched_weights(sd15, [(match.patches, 0.0)]):
        assert torch.equal(_unet_out(sd15["unet"]), base_unet)
        assert torch.equal(_te_out(sd15["te1"]), base_te)
        assert_pristine(sd15, pristine["sd15"])
    with patched_weights(sd15, [(match.patches, 1.0)]):
        assert not torch.equal(_unet_out(sd15["unet"]), base_unet)
        assert not torch.equal(_te_out(sd15["te1"]), base_te)
    assert torch.equal(_unet_out(sd15["unet"]), base_unet)
    assert torch.equal(_te_out(sd15["te1"]), base_te)
    assert_pristine(sd15, pristine["sd15"])


def test_strength_one_computes_what_a_hand_merged_copy_computes(sd15):
    writer = _kohya(sd15, 2)
    match = match_lora(writer.sd, sd15, "sd15")
    merged = copy.deepcopy(sd15["unet"])
    with torch.no_grad():
        for (slot, module, param), delta in writer.expected.deltas.items():
            if slot == "unet":
                getattr(merged.get_submodule(module), param).add_(delta)
    with patched_weights(sd15, [(match.patches, 1.0)]):
        torch.testing.assert_close(_unet_out(sd15["unet"]), _unet_out(merged), rtol=1e-5, atol=1e-5)


def test_two_stacked_loras_add_up_with_their_strengths(sd15, pristine):
    first, second = _kohya(sd15, 3), _kohya(sd15, 4, names=("attn1_q", "ff"))
    a = match_lora(first.sd, sd15, "sd15")
    b = match_lora(second.sd, sd15, "sd15")
    base = pristine["sd15"]
    with patched_weights(sd15, [(a.patches, 0.8), (b.patches, -0.5)]):
        for key in set(first.expected.deltas) | set(second.expected.deltas):
            slot, module, param = key
            expected = base[slot][f"{module}.{param}"].clone()
            expected += 0.8 * first.expected.deltas.get(key, torch.zeros_like(expected))
            expected += -0.5 * second.expected.deltas.get(key, torch.zeros_like(expected))
            live = getattr(sd15[slot].get_submodule(module), param).detach()
            torch.testing.assert_close(live, expected, rtol=1e-5, atol=1e-6)
    assert_pristine(sd15, base)


@pytest.mark.parametrize("error", [RuntimeError("sampling failed"), KeyboardInterrupt()])
def test_weights_are_restored_when_the_block_raises(sd15, pristine, error):
    match = match_lora(_kohya(sd15, 5).sd, sd15, "sd15")
    with pytest.raises(type(error)):
        with patched_weights(sd15, [(match.patches, 1.0)]):
            raise error
    assert_pristine(sd15, pristine["sd15"])


def test_half_precision_weights_patch_in_float32_and_restore_bits(sd15):
    te = copy.deepcopy(sd15["te1"]).half()
    name = live_clip_name(te, TE_Q)
    writer = Writer({"te1": te}, seed=6, dtype=torch.float16)
    writer.lora(underscored("lora_te_", TE_Q), "te1", name, rank=2, alpha=1.0)
    match = match_lora(writer.sd, {"te1": te}, "sd15")
    weight = te.get_submodule(name).weight
    original = weight.detach().clone()
    with patched_weights({"te1": te}, [(match.patches, 0.7)]):
        assert weight.dtype == torch.float16
        expected = (original.float() + 0.7 * writer.expected.deltas[("te1", name, "weight")]).half()
        torch.testing.assert_close(weight.detach(), expected, rtol=1e-3, atol=1e-4)  # one float16 rounding
    assert torch.equal(weight.detach(), original)


def test_patches_of_a_slot_not_given_are_left_alone(sd15, pristine):
    match = match_lora(_kohya(sd15, 8).sd, sd15, "sd15")
    with patched_weights({"unet": sd15["unet"]}, [(match.patches, 1.0)]):
        assert_pristine({"te1": sd15["te1"]}, pristine["sd15"])
    assert_pristine(sd15, pristine["sd15"])
