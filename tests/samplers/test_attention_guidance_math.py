"""PAG and SAG as post-cfg hooks on the toy network: SAG's mask and blur against references written here (the
Gaussian against scipy), each hook's step against a manual computation from the toy network, scale 0 bit for bit,
cfg == 1 (PAG applies without the uncond; SAG makes the sampler evaluate it), and the re-evaluation hook API."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch
from scipy import ndimage

from nodes.samplers.attention_guidance import (PerturbedAttentionGuidance, SelfAttentionGuidance, attended_mask,
                                               attention_grid, blurred_where, gaussian_blur)
from nodes.samplers.conds import guided_x0
from nodes.samplers.guidance import CfgArgs, RunGuidance, StatelessHook, cfg_zero_star
from nodes.samplers.pipeline import ksample
from tests.samplers.toy import ToyModel, constant_conditioning, toy_network

G = torch.Generator().manual_seed(5)
X = torch.randn(2, 4, 8, 6, generator=G) * 3
SIGMA = torch.tensor([2.5, 2.5])
POS, NEG = constant_conditioning(0.3), constant_conditioning(-0.2)


@dataclass(frozen=True)
class Offset:
    """A stand-in module patch for the toy network: adds `value` to its output while applied."""

    value: float

    @contextlib.contextmanager
    def applied(self, model):
        model.offset += self.value
        try:
            yield
        finally:
            model.offset -= self.value


class PatchableToy(ToyModel):
    """The toy network with `patched_with`, the MODEL handle's hold-one-more-patch context."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0
        self.offsets_seen: list[float] = []

    def apply_model(self, x_in, t, context, concat=None, **extra):
        self.offsets_seen.append(self.offset)
        return super().apply_model(x_in, t, context, concat, **extra) + self.offset

    @contextlib.contextmanager
    def patched_with(self, patch):
        with patch.applied(self):
            yield


def toy_x0(model, x: torch.Tensor, conditioning: list, offset: float = 0.0) -> torch.Tensor:
    """The toy network's x0 for one constant conditioning, computed directly."""
    ms = model.model_sampling
    context = conditioning[0][0].expand(x.shape[0], -1, -1)
    out = toy_network(ms.calculate_input(SIGMA, x), ms.timestep(SIGMA).float(), context) + offset
    return ms.calculate_denoised(SIGMA, out, x)


@dataclass
class FixedRecorder:
    """A stand-in SAG recorder: hands out a fixed attention map (None: nothing recorded), counts how often it is
    held."""

    map: torch.Tensor | None
    applied_count: int = 0

    @contextlib.contextmanager
    def applied(self, model):
        self.applied_count += 1
        yield

    def attention(self, batch: int) -> torch.Tensor | None:
        return None if self.map is None else self.map[:batch]


def step(model, hooks: tuple, cfg: float = 5.0):
    return guided_x0(model, X, SIGMA, POS, NEG, cfg, guidance=RunGuidance.start(hooks))


# -- SAG's mask and blur ---------------------------------------------------------------------------------------------

def test_attention_grid_follows_the_latent_aspect():
    assert attention_grid(4, 16, 16) == (2, 2)
    assert attention_grid(6, 24, 16) == (3, 2) and attention_grid(6, 16, 24) == (2, 3)
    assert attention_grid(988, 152, 104) == (38, 26)  # SDXL 1216x832: a 38x26 middle level
    assert attention_grid(24, 16, 16) == (6, 4)  # divisors 4 and 6 are both 1 from 5: the larger one
    assert attention_grid(1, 8, 8) == (1, 1) and attention_grid(2, 16, 8) == (2, 1)


def test_attended_mask_marks_keys_above_one_and_upsamples_by_nearest():
    n = 6  # a 3x2 grid for a 12x8 latent
    focused = torch.zeros(n, n)
    focused[:, 1] = 1.0  # every query on key 1
    uniform = torch.full((n, n), 1.0 / n)
    attention = torch.stack([torch.stack([focused, uniform]), torch.stack([uniform, uniform])])  # [2, 2 heads, n, n]
    mask = attended_mask(attention, 12, 8)
    expected = torch.zeros(2, 1, 12, 8)
    expected[0, 0, 0:4, 4:8] = 1.0  # key 1 = grid row 0, column 1; heads average to 3.5 there, 0.5 elsewhere
    assert torch.equal(mask, expected)  # item 1: every key receives exactly 1.0, not above the threshold
    assert torch.equal(attended_mask(attention, 12, 8, threshold=0.4), torch.cat([torch.ones(1, 1, 12, 8),
                                                                                    expected[1:] + 1]))


def test_gaussian_blur_matches_scipy_and_sigma_zero_is_identity():
    x = torch.randn(2, 3, 12, 10, generator=G)
    for sigma in (0.7, 2.0, 5.0):
        # torch's "reflect" is scipy's "mirror"; a radius of 4 (the 9-wide kernel) is truncate = 4 / sigma
        expected = ndimage.gaussian_filter(x.double().numpy(), sigma=sigma, mode="mirror", truncate=4 / sigma,
                                           axes=(2, 3))
        torch.testing.assert_close(gaussian_blur(x, sigma), torch.from_numpy(expected).float(), atol=1e-5, rtol=0)
    assert torch.equal(gaussian_blur(x, 0.0), x)
    flat = torch.full((1, 2, 9, 9), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, 3.0), flat)


def test_blurred_where_keeps_the_unmasked_pixels_exactly():
    x = torch.randn(1, 4, 8, 8, generator=G)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1.0
    out = blurred_where(x, mask, 2.0)
    assert torch.equal(out[..., 4:, :], x[..., 4:, :])
    torch.testing.assert_close(out[..., :4, :], gaussian_blur(x, 2.0)[..., :4, :])


# -- the hooks -------------------------------------------------------------------------------------------------------

def test_pag_adds_scale_times_cond_minus_perturbed_cond_also_at_cfg_one():
    model = PatchableToy()
    cond, uncond = toy_x0(model, X, POS), toy_x0(model, X, NEG)
    perturbed = toy_x0(model, X, POS, offset=0.5)
    x0, _ = step(model, (PerturbedAttentionGuidance(3.0, Offset(0.5)),))
    torch.testing.assert_close(x0, uncond + (cond - uncond) * 5.0 + (cond - perturbed) * 3.0)
    x0, uncond_out = step(model, (PerturbedAttentionGuidance(3.0, Offset(0.5)),), cfg=1.0)
    assert uncond_out is None
    torch.testing.assert_close(x0, cond + (cond - perturbed) * 3.0)
    assert model.offset == 0.0 and 0.5 in model.offsets_seen  # held for the perturbed pass only


def test_post_cfg_hooks_run_in_order_on_the_previous_result():
    model = PatchableToy()
    pag = PerturbedAttentionGuidance(2.0, Offset(0.25))
    zero_star = StatelessHook("post_cfg", cfg_zero_star)
    cond, uncond = toy_x0(model, X, POS), toy_x0(model, X, NEG)
    args = CfgArgs(X, SIGMA, 5.0, cond, uncond, denoised=uncond + (cond - uncond) * 5.0)
    after_zero_star = cfg_zero_star(args)
    expected = after_zero_star + (cond - toy_x0(model, X, POS, offset=0.25)) * 2.0
    torch.testing.assert_close(step(model, (zero_star, pag))[0], expected)


def test_sag_blurs_the_uncond_where_attended_renoises_and_guides_away():
    model = PatchableToy()
    attention = torch.zeros(2, 1, 6, 6)  # a 3x2 grid over the 8x6 latent
    attention[0, 0, :, 0] = 1.0  # item 0: everything attends to key 0
    attention[1, 0, :, 5] = 1.0  # item 1: to key 5
    recorder = FixedRecorder(attention)
    hook = SelfAttentionGuidance(0.5, 2.0, lambda: recorder)
    cond, uncond = toy_x0(model, X, POS), toy_x0(model, X, NEG)
    mask = attended_mask(attention, 8, 6)
    # nearest upsampling of 3 rows to 8 gives the cells 3, 3 and 2 rows; 2 columns to 6 gives 3 each
    assert mask[0, 0, :3, :3].all() and mask[0].sum() == 9
    assert mask[1, 0, 6:, 3:].all() and mask[1].sum() == 6
    degraded = blurred_where(uncond, mask, 2.0)
    expected = uncond + (cond - uncond) * 5.0 + (degraded - toy_x0(model, degraded + X - uncond, NEG)) * 0.5
    x0, _ = step(model, (hook,))
    torch.testing.assert_close(x0, expected)
    assert recorder.applied_count == 1  # held for the step's uncond only, not for its own pass
    x0, uncond_out = step(model, (SelfAttentionGuidance(0.5, 2.0, lambda: recorder),), cfg=1.0)
    torch.testing.assert_close(uncond_out, uncond)  # evaluated at cfg 1 too
    torch.testing.assert_close(x0, uncond + (cond - uncond) * 1.0 + (degraded - toy_x0(model, degraded + X - uncond,
                                                                                       NEG)) * 0.5)


def test_sag_leaves_tiny_latents_and_missing_maps_alone():
    model = PatchableToy()
    small = X[..., :4, :4]
    plain, _ = guided_x0(model, small, SIGMA, POS, NEG, 5.0)
    recorder = FixedRecorder(torch.full((2, 1, 4, 4), 0.25))
    guided, _ = guided_x0(model, small, SIGMA, POS, NEG, 5.0,
                          guidance=RunGuidance.start((SelfAttentionGuidance(0.5, 2.0, lambda: recorder),)))
    torch.testing.assert_close(guided, plain)
    empty = FixedRecorder(None)
    torch.testing.assert_close(step(model, (SelfAttentionGuidance(0.5, 2.0, lambda: empty),))[0],
                               guided_x0(model, X, SIGMA, POS, NEG, 5.0)[0])


def test_scale_zero_pag_is_plain_cfg_bit_for_bit_in_a_run():
    def run(hooks: tuple, cfg: float) -> torch.Tensor:
        model = ToyModel()
        model.guidance = hooks
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        return ksample(model, seed=3, steps=4, cfg=cfg, sampler_name="euler", scheduler="normal", positive=POS,
                       negative=NEG, latent=latent)["samples"]

    for cfg in (5.0, 1.0):  # the toy has no `patched_with`: the hook must not evaluate anything at scale 0
        assert torch.equal(run((PerturbedAttentionGuidance(0.0, Offset(1.0)),), cfg), run((), cfg))


def test_started_hooks_and_the_evaluate_api():
    sag = SelfAttentionGuidance(0.5, 2.0, lambda: FixedRecorder(torch.zeros(1, 1, 1, 1)))
    first, second = RunGuidance.start((sag,)), RunGuidance.start((sag,))
    assert first.needs_uncond and len(first.uncond_patches) == 1
    assert first.uncond_patches[0] is not second.uncond_patches[0]
    assert not RunGuidance.start((PerturbedAttentionGuidance(1.0, Offset(1.0)),)).needs_uncond
    args = CfgArgs(X, SIGMA, 5.0, X, X)
    with pytest.raises(RuntimeError, match="run the model again"):
        args.evaluate(X, "cond")
    with pytest.raises(ValueError, match="'cond' or 'uncond'"):
        CfgArgs(X, SIGMA, 5.0, X, X, evaluator=lambda *a: X).evaluate(X, "both")
    with pytest.raises(TypeError, match="cannot hold a module patch"):
        step(ToyModel(), (PerturbedAttentionGuidance(1.0, Offset(1.0)),))
