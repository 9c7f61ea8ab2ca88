"""PerturbedAttentionGuidance and SelfAttentionGuidance on the tiny UNet and through the real executor: the
perturbed and the recorded middle-block self-attention against hand references (reference attention processors set
on a copy of the UNet), one guided step against a manual computation, ComfyUI's inputs in /object_info, scale 0 bit
for bit, batches, cfg 1, and the cached base model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from graphengine import Executor
from nodes.handles import UNetModel
from nodes.model_patches.mid_attention import IdentityMidSelfAttention, MidAttentionRecorder, mid_self_attentions
from nodes.samplers.attention_guidance import (PerturbedAttentionGuidance, SelfAttentionGuidance, attended_mask,
                                               blurred_where)
from nodes.samplers.conds import guided_x0
from nodes.samplers.guidance import RunGuidance

from .test_lora_nodes import run, samples
from .test_module_patch_math import hook_state
from .test_pipeline import base_nodes, capture, empty_latent, ksampler
from .tiny import CONTEXT_DIM, tiny_unet

SIZE = 128  # a 16x16 latent: the tiny UNet's middle level is 2x2 (4 attention tokens)
G = torch.Generator().manual_seed(3)
X = torch.randn(2, 4, 16, 16, generator=G) * 3
SIGMA = torch.tensor([4.0, 4.0])
POS = [[torch.randn(1, 7, CONTEXT_DIM, generator=G), {}]]
NEG = [[torch.randn(1, 7, CONTEXT_DIM, generator=G), {}]]


class IdentityReference:
    """Reference attention processor: attn1's output is to_out(to_v(x)), from the weights."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        value = F.linear(hidden_states, attn.to_v.weight, attn.to_v.bias)
        return F.linear(value, attn.to_out[0].weight, attn.to_out[0].bias)


class RecordingReference:
    """Reference attention processor: softmax(q k^T / sqrt(d)) per head from the weights; the usual output."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        b, n, _ = hidden_states.shape
        q = F.linear(hidden_states, attn.to_q.weight).reshape(b, n, attn.heads, -1).transpose(1, 2)
        k = F.linear(hidden_states, attn.to_k.weight).reshape(b, n, attn.heads, -1).transpose(1, 2)
        v = F.linear(hidden_states, attn.to_v.weight).reshape(b, n, attn.heads, -1).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        self.maps.append(probs)
        out = (probs @ v).transpose(1, 2).reshape(b, n, -1)
        return F.linear(out, attn.to_out[0].weight, attn.to_out[0].bias)


def handle(unet) -> UNetModel:
    return UNetModel.build(unet, prediction="eps", latent_scale_factor=0.18215, family="sd1", latent_space="sd1")


def with_processors(unet, processor, first_only: bool = False):
    """A copy of the UNet whose middle-block attn1 (or only the first one) uses `processor`."""
    reference = copy.deepcopy(unet)
    targets = mid_self_attentions(reference)
    for attn in targets[:1] if first_only else targets:
        attn.set_processor(processor)
    return reference


def unet_out(unet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, torch.tensor([500.0] * x.shape[0]), encoder_hidden_states=POS[0][0].expand(x.shape[0], -1, -1),
                    return_dict=False)[0]


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


# -- the module patches --------------------------------------------------------------------------------------------

def test_identity_patch_equals_the_reference_and_leaves_no_trace(unet):
    clean, plain = hook_state(unet), unet_out(unet, X)
    with IdentityMidSelfAttention().applied(unet):
        perturbed = unet_out(unet, X)
    torch.testing.assert_close(perturbed, unet_out(with_processors(unet, IdentityReference()), X))
    assert (perturbed - plain).abs().max() > 1e-3
    assert hook_state(unet) == clean and torch.equal(unet_out(unet, X), plain)


def test_recorder_holds_the_reference_attention_map_and_changes_nothing(unet):
    recorder, plain = MidAttentionRecorder(), unet_out(unet, X)
    with recorder.applied(unet):
        recorded = unet_out(unet, X)
    assert torch.equal(recorded, plain)
    reference = RecordingReference()
    unet_out(with_processors(unet, reference, first_only=True), X)
    assert len(recorder.maps) == 1 and recorder.maps[0].shape == (2, mid_self_attentions(unet)[0].heads, 4, 4)
    torch.testing.assert_close(recorder.attention(2), reference.maps[0])
    assert recorder.attention(3) is None
    with recorder.applied(unet):  # a new recording each time it is held
        unet_out(unet, X[:1])
    assert recorder.attention(1).shape[0] == 1 and recorder.attention(2) is None


# -- one guided step against a manual computation -------------------------------------------------------------------

def step(model, cfg: float, *hooks):
    guidance = RunGuidance.start(hooks) if hooks else None
    return guided_x0(model, X, SIGMA, POS, NEG, cfg, guidance=guidance)


def test_pag_step_is_cfg_plus_scale_times_cond_minus_perturbed(unet):
    model = handle(unet)
    plain, uncond = step(model, 5.0)
    cond, _ = step(model, 1.0)
    perturbed, _ = step(handle(with_processors(unet, IdentityReference())), 1.0)
    hook = PerturbedAttentionGuidance(3.0, IdentityMidSelfAttention())
    guided, guided_uncond = step(model, 5.0, hook)
    close = {"atol": 1e-4, "rtol": 1e-4}  # the plain step batches cond with uncond: float rounding differs
    torch.testing.assert_close(guided, plain + (cond - perturbed) * 3.0, **close)
    assert torch.equal(guided_uncond, uncond)
    at_one, none = step(model, 1.0, hook)  # PAG still applies without the uncond pass
    assert none is None
    torch.testing.assert_close(at_one, cond + (cond - perturbed) * 3.0, **close)


def test_sag_step_blurs_where_the_uncond_attends_and_guides_away(unet):
    model = handle(unet)
    plain, uncond = step(model, 5.0)
    cond, _ = step(model, 1.0)
    reference = RecordingReference()  # the uncond's attention map, recorded by the reference processor
    guided_x0(handle(with_processors(unet, reference, first_only=True)), X, SIGMA, NEG, NEG, 1.0)
    mask = attended_mask(reference.maps[0], 16, 16)
    assert 0 < float(mask.mean()) < 1  # some patches, not all
    degraded = blurred_where(uncond, mask, 2.0)
    degraded_x0, _ = guided_x0(model, degraded + X - uncond, SIGMA, NEG, NEG, 1.0)
    hook = SelfAttentionGuidance(0.5, 2.0, MidAttentionRecorder)
    guided, _ = step(model, 5.0, hook)
    torch.testing.assert_close(guided, plain + (degraded - degraded_x0) * 0.5, atol=1e-4, rtol=1e-4)
    at_one, uncond_at_one = step(model, 1.0, hook)  # ComfyUI evaluates the uncond for SAG even at cfg 1
    torch.testing.assert_close(uncond_at_one, uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(at_one, uncond + (cond - uncond) + (degraded - degraded_x0) * 0.5, atol=1e-4,
                               rtol=1e-4)
    assert hook_state(unet) == hook_state(tiny_unet())


# -- through the executor ---------------------------------------------------------------------------------------------

PAG = {"class_type": "PerturbedAttentionGuidance", "inputs": {"scale": 3.0}}
SAG = {"class_type": "SelfAttentionGuidance", "inputs": {"scale": 0.5, "blur_sigma": 2.0}}


def graph(*patches: dict, batch: int = 1, cfg: float = 5.0) -> dict:
    nodes = {**base_nodes(), "empty": empty_latent(batch=batch, size=SIZE)}
    model = ["ckpt", 0]
    for i, patch in enumerate(patches):
        nodes[f"p{i}"] = {**patch, "inputs": {**patch["inputs"], "model": model}}
        model = [f"p{i}", 0]
    nodes["sample"] = ksampler(["empty", 0], seed=5, model=model)
    nodes["sample"]["inputs"]["cfg"] = cfg
    nodes["out"] = capture(["sample", 0])
    nodes["model"] = capture(["ckpt", 0])
    return nodes


def scaled(patch: dict, **inputs) -> dict:
    return {**patch, "inputs": {**patch["inputs"], **inputs}}


def test_object_info_has_comfyuis_inputs(env):
    info = env.registry.object_info()
    pag = info["PerturbedAttentionGuidance"]
    assert pag["input"]["required"] == {
        "model": ["MODEL"], "scale": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                                "round": 0.01}]}
    assert pag["output"] == ["MODEL"] and pag["category"] == "model_patches/unet"
    sag = info["SelfAttentionGuidance"]
    assert sag["input"]["required"] == {
        "model": ["MODEL"], "scale": ["FLOAT", {"default": 0.5, "min": -2.0, "max": 5.0, "step": 0.01}],
        "blur_sigma": ["FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1}]}
    assert sag["output"] == ["MODEL"] and sag["category"] == "_for_testing"
    assert sag["display_name"] == "Self-Attention Guidance" and sag["experimental"] is True


@pytest.mark.parametrize("cfg", [5.0, 1.0])
def test_scale_zero_is_the_base_image_and_scale_above_zero_changes_it(env, cfg):
    executor = Executor(env.registry)
    first = run(executor, graph(cfg=cfg))
    base, unet = samples(first), first.outputs["model"]["value"][0].unet
    clean = hook_state(unet)
    for patch in (PAG, SAG):
        assert torch.equal(samples(run(executor, graph(scaled(patch, scale=0.0), cfg=cfg))), base)
        guided = samples(run(executor, graph(patch, cfg=cfg)))
        assert torch.isfinite(guided).all() and (guided - base).abs().max() > 1e-2, patch["class_type"]
        assert hook_state(unet) == clean
        again = run(executor, graph(cfg=cfg))
        assert torch.equal(samples(again), base)
        model = again.outputs["model"]["value"][0]
        assert model.guidance == () and model.module_patches == ()


def test_batches_guide_each_item_like_a_single_run(env):
    executor = Executor(env.registry)
    for patches in ((PAG,), (SAG,), (SAG, PAG)):
        single = samples(run(executor, graph(*patches)))
        batch = samples(run(executor, graph(*patches, batch=2)))
        assert batch.shape[0] == 2 and not torch.equal(batch[0], batch[1])
        # latents of ~300 here: the batched network calls differ from single ones by ~1e-3 even unguided, while
        # guidance moves them by 17-43 (a mixed-up row would be that far off)
        torch.testing.assert_close(batch[:1], single, atol=1e-2, rtol=0)
    both = samples(run(executor, graph(SAG, PAG)))
    assert not torch.equal(both, samples(run(executor, graph(PAG))))
    assert not torch.equal(both, samples(run(executor, graph(SAG))))
