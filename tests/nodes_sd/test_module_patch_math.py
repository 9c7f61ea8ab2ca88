"""Module patches on tiny diffusers / transformers modules: each patch's block math against a reference written
here from the published formulas, and the patched instance left exactly as it was (hooks, processors, attributes),
also after an error inside the block."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from nodes.lora.applied import MODULE_ATTR, module_patches_applied
from nodes.model_patches.attention import CLIP_PROJECTIONS, UNET_PROJECTIONS, projection_scale
from nodes.model_patches.downscale import DeepShrinkPatch
from nodes.model_patches.freeu import FreeUPatch, scaled_backbone
from nodes.model_patches.hypertile import HyperTilePatch
from nodes.handles import UNetModel
from nodes.samplers.model_sampling import ModelSamplingDiscrete

from .tiny import CONTEXT_DIM, tiny_text_encoder, tiny_unet

FREEU_ATTRS = ("b1", "b2", "s1", "s2")


def three_level_unet() -> UNet2DConditionModel:
    """Base width 16: up-path backbones of 64 (4x, FreeU's b1/s1), 32 (2x, b2/s2) and 16 (left alone)."""
    torch.manual_seed(11)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CONTEXT_DIM,
        attention_head_dim=4, norm_num_groups=8).eval()


def inputs(size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, size, size, generator=g), torch.randn(2, 7, CONTEXT_DIM, generator=g)


def run(unet, x, context, t: float = 500.0) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, torch.tensor([t, t]), encoder_hidden_states=context, return_dict=False)[0]


def hook_state(module: torch.nn.Module) -> dict:
    """Everything a module patch may touch on an instance: hooks of every submodule, attention processor classes,
    diffusers' FreeU attributes, the active-patch marker."""
    return {
        "hooks": [(name, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._forward_hooks_with_kwargs),
                   dict(m._forward_pre_hooks_with_kwargs)) for name, m in module.named_modules()],
        "processors": {k: type(v) for k, v in getattr(module, "attn_processors", {}).items()},
        "freeu": [(name, {a: getattr(m, a) for a in FREEU_ATTRS if hasattr(m, a)})
                  for name, m in module.named_modules()],
        "marker": hasattr(module, MODULE_ATTR),
    }


# -- references from the published formulas -----------------------------------------------------------------------

def low_frequency_scaled(x: torch.Tensor, s: float) -> torch.Tensor:
    """FreeU's skip filter: the centred 2x2 block of the shifted 2-D spectrum times s."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.float().contiguous()), dim=(-2, -1))
    h, w = x.shape[-2:]
    mask = torch.ones(h, w)
    mask[h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1] = s
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))).real


def freeu_reference(x: torch.Tensor, width: int, b: float, s: float, version: int) -> torch.Tensor:
    h, skip = x[:, :width].clone(), x[:, width:]
    if version == 1:
        factor = b
    else:
        mean = h.mean(dim=1, keepdim=True)
        low = mean.amin(dim=(2, 3), keepdim=True)
        high = mean.amax(dim=(2, 3), keepdim=True)
        factor = 1 + (b - 1) * (mean - low) / (high - low)
    h[:, :width // 2] *= factor
    return torch.cat([h, low_frequency_scaled(skip, s)], dim=1)


def capture_inputs(unet, patch, x, context) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(backbone width, input before the patch, input after it) of every up-path resnet in one patched call."""
    seen: dict[int, list] = {}
    handles = []
    resnets = [r for block in unet.up_blocks for r in block.resnets]
    for i, resnet in enumerate(resnets):  # registered before the patch's hooks: sees the raw input
        handles.append(resnet.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0])))
    with patch.applied(unet):
        late = [r.register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0])) for i, r in enumerate(resnets)]
        run(unet, x, context)
        for handle in late:
            handle.remove()
    for handle in handles:
        handle.remove()
    widths = [64, 64, 64, 32, 32, 16]  # h leaves the mid block with 64 channels, each up resnet with its block's
    assert len(resnets) == len(widths)
    return [(widths[i], *seen[i]) for i in range(len(resnets))]


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_rewrites_each_up_resnet_input_by_the_published_formula(version):
    unet = three_level_unet()
    patch = FreeUPatch(b1=1.5, b2=0.7, s1=0.6, s2=1.8, version=version)
    factors = {64: (1.5, 0.6), 32: (0.7, 1.8)}
    for width, raw, patched in capture_inputs(unet, patch, *inputs()):
        if width in factors:
            torch.testing.assert_close(patched, freeu_reference(raw, width, *factors[width], version),
                                       atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(patched, raw)


def test_freeu_v2_leaves_a_constant_map_unscaled():
    h = torch.randn(2, 8, 1, 1)  # a 1x1 level: the normalised mean map has no range
    assert torch.equal(scaled_backbone(h, 1.4, version=2), h)
    assert torch.equal(scaled_backbone(h, 1.4, version=1)[:, :4], h[:, :4] * 1.4)


def test_freeu_identity_and_non_identity_settings():
    unet = three_level_unet()
    x, context = inputs()
    base = run(unet, x, context)
    for version in (1, 2):
        with FreeUPatch(1.0, 1.0, 1.0, 1.0, version).applied(unet):
            torch.testing.assert_close(run(unet, x, context), base, atol=1e-5, rtol=1e-5)  # FFT round trip only
        with FreeUPatch(1.1, 1.2, 0.9, 0.2, version).applied(unet):
            assert (run(unet, x, context) - base).abs().max() > 1e-2


def scaled_copy(module: torch.nn.Module, factors: dict[str, float]) -> torch.nn.Module:
    """ComfyUI's way: every matching projection's weight and bias multiplied by the factor."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        for name, sub in module.named_modules():
            for suffix, factor in factors.items():
                if name.endswith("." + suffix):
                    sub.weight.mul_(factor)
                    if sub.bias is not None:
                        sub.bias.mul_(factor)
    return module


@pytest.mark.parametrize("prefix", ["attn1.", "attn2."])
def test_unet_attention_multiply_equals_scaling_the_projection_weights(prefix):
    unet = tiny_unet()
    x, context = inputs()
    q, k, v, out = 1.3, 0.6, 2.0, 0.8
    reference = run(scaled_copy(unet, dict(zip((prefix + s for s in UNET_PROJECTIONS), (q, k, v, out)))), x, context)
    base = run(unet, x, context)
    with projection_scale(prefix, UNET_PROJECTIONS, q, k, v, out).applied(unet):
        patched = run(unet, x, context)
    torch.testing.assert_close(patched, reference, atol=1e-5, rtol=1e-5)
    assert (patched - base).abs().max() > 1e-3
    with projection_scale(prefix, UNET_PROJECTIONS, 1.0, 1.0, 1.0, 1.0).applied(unet):
        assert torch.equal(run(unet, x, context), base)


def test_clip_attention_multiply_equals_scaling_the_projection_weights():
    encoder = tiny_text_encoder()
    ids = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 4])
    q, k, v, out = 0.5, 1.5, 1.2, 2.0
    reference = scaled_copy(encoder, dict(zip(CLIP_PROJECTIONS, (q, k, v, out))))
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
        base = encoder(input_ids=ids).last_hidden_state
        with projection_scale("", CLIP_PROJECTIONS, q, k, v, out).applied(encoder):
            patched = encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(patched, expected, atol=1e-5, rtol=1e-5)
    assert (patched - base).abs().max() > 1e-3


# -- Deep Shrink -----------------------------------------------------------------------------------------------------

def resized(h: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    return F.interpolate(h, size=(height, width), mode=mode)


def deep_shrink_reference(unet, x, context, t: float, shrink_level: int, factor: float, down_mode: str,
                          up_mode: str) -> torch.Tensor:
    """The UNet forward written out block by block: the hidden state leaving down block `shrink_level` (after its
    skip was kept) is resized by 1/factor; on the way up h is resized to each skip that differs, and each upsampler
    interpolates to the next skip's size."""
    with torch.no_grad():
        emb = unet.time_embedding(unet.time_proj(torch.tensor([t, t])))
        h = unet.conv_in(x)
        skips = [h]
        for level, block in enumerate(unet.down_blocks):
            extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            h, res = block(hidden_states=h, temb=emb, **extra)
            skips.extend(res)
            if level == shrink_level:
                h = resized(h, round(h.shape[-2] / factor), round(h.shape[-1] / factor), down_mode)
        h = unet.mid_block(h, emb, encoder_hidden_states=context)
        for block in unet.up_blocks:
            for j, resnet in enumerate(block.resnets):
                skip = skips.pop()
                if h.shape[-2:] != skip.shape[-2:]:
                    h = resized(h, *skip.shape[-2:], up_mode)
                h = resnet(torch.cat([h, skip], dim=1), emb)
                if getattr(block, "attentions", None):
                    h = block.attentions[j](h, encoder_hidden_states=context, return_dict=False)[0]
            if block.upsamplers:
                h = block.upsamplers[0](h, skips[-1].shape[-2:])
        return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def shrink(block_number: int, factor: float, start: float = 0.0, end: float = 1.0) -> DeepShrinkPatch:
    sampling = ModelSamplingDiscrete()
    return DeepShrinkPatch(block_number, factor, sampling.percent_to_sigma(start), sampling.percent_to_sigma(end),
                           True, "bicubic", "bilinear", sampling)


@pytest.mark.parametrize("size,factor", [(16, 2.0), (24, 2.0), (24, 3.0)])
def test_deep_shrink_matches_the_block_by_block_reference(size, factor):
    unet = tiny_unet()
    x, context = inputs(size)
    # ComfyUI input block 2 of this 1-resnet-per-level UNet is the first level's downsampler.
    with shrink(2, factor).applied(unet):
        patched = run(unet, x, context, t=700.0)
    expected = deep_shrink_reference(unet, x, context, 700.0, 0, factor, "bicubic", "bilinear")
    torch.testing.assert_close(patched, expected, atol=1e-5, rtol=1e-5)
    unshrunk = deep_shrink_reference(unet, x, context, 700.0, -1, factor, "bicubic", "bilinear")
    torch.testing.assert_close(run(unet, x, context, t=700.0), unshrunk, atol=1e-5, rtol=1e-5)
    assert (patched - unshrunk).abs().max() > 1e-3


def test_deep_shrink_acts_only_inside_its_sigma_range():
    unet = tiny_unet()
    x, context = inputs()
    sampling = ModelSamplingDiscrete()
    patch = shrink(2, 2.0, start=0.0, end=0.35)  # sigma from max down to sigma at 35 % of the schedule
    inside, outside = 999.0, 100.0  # timesteps: 999 = sigma_max, 100 = late in the schedule
    assert float(sampling.sigma(torch.tensor(outside))) < patch.sigma_end < float(sampling.sigma(torch.tensor(inside)))
    with patch.applied(unet):
        early, late = run(unet, x, context, inside), run(unet, x, context, outside)
    assert torch.equal(late, run(unet, x, context, outside))
    assert (early - run(unet, x, context, inside)).abs().max() > 1e-3


def test_deep_shrink_reads_timesteps_through_a_later_model_sampling_node():
    patch = shrink(2, 2.0, start=0.0, end=0.35)
    handle = UNetModel(tiny_unet(), patch.model_sampling, 0.18215, 4, module_patches=(patch,))
    zsnr = ModelSamplingDiscrete(zsnr=True)
    rebound = handle.with_model_sampling(zsnr).module_patches[0]
    assert handle.module_patches[0] is patch and rebound.model_sampling is zsnr
    assert (rebound.sigma_start, rebound.sigma_end) == (patch.sigma_start, patch.sigma_end)  # set at node time
    # A sigma just inside the window reaches the UNet as the zsnr table's timestep; read back through the original
    # table it would look outside the window.
    sigma = torch.tensor(patch.sigma_end * 1.04)
    timestep = zsnr.timestep(sigma)
    assert float(patch.model_sampling.sigma(timestep)) < patch.sigma_end
    assert rebound.shrinks_at(timestep) and not patch.shrinks_at(timestep)


@pytest.mark.parametrize("after_skip", [True, False])
def test_deep_shrink_runs_at_every_block_and_odd_size(after_skip):
    unet = tiny_unet()
    x, context = inputs(22)
    base = run(unet, x, context)
    for block in range(1, 10):
        patch = DeepShrinkPatch(block, 1.7, 1e9, 0.0, after_skip, "bislerp", "nearest-exact", ModelSamplingDiscrete())
        with patch.applied(unet):
            out = run(unet, x, context)
        assert out.shape == base.shape and torch.isfinite(out).all()
        assert (block >= 8) == torch.equal(out, base)  # this UNet has input blocks 0..7 only


# -- HyperTile -------------------------------------------------------------------------------------------------------

def test_hypertile_runs_top_level_self_attention_query_tile_by_query_tile():
    unet = tiny_unet()
    x, context = inputs(16)
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1  # 16x16 = 256 tokens
    seen = {}
    raw = attn.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    # tile 64 px -> 8 latent pixels: the smallest divisor of 16 that is >= 8 is 8, so 2 x 2 tiles of 8 x 8
    with HyperTilePatch(tile_size=64, swap_size=1, max_depth=0, scale_depth=False).applied(unet):
        late = attn.register_forward_hook(lambda m, a, out: seen.update(y=out))
        patched = run(unet, x, context)
        late.remove()
    raw.remove()
    grid = seen["x"].reshape(2, 16, 16, -1)
    runs = seen["x"].reshape(2, 4, 64, -1)  # keys and values of tile i: the i-th run of 64 tokens (ComfyUI's view)
    expected = torch.empty_like(grid)
    with torch.no_grad():
        for i, (top, left) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
            tile = grid[:, top:top + 8, left:left + 8].reshape(2, 64, -1)
            out = attn(tile, encoder_hidden_states=runs[:, i])
            expected[:, top:top + 8, left:left + 8] = out.reshape(2, 8, 8, -1)
    torch.testing.assert_close(seen["y"], expected.reshape(2, 256, -1), atol=1e-5, rtol=1e-5)
    assert (patched - run(unet, x, context)).abs().max() > 1e-4
    with HyperTilePatch(tile_size=256, swap_size=1, max_depth=0, scale_depth=False).applied(unet):
        assert torch.equal(run(unet, x, context), run(unet, x, context))  # 32 latent px: one tile, left whole


def test_hypertile_random_tiles_repeat_per_run_and_fit_any_aspect():
    unet = tiny_unet()
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 4, 16, 24, generator=g), inputs()[1]
    patch = HyperTilePatch(tile_size=32, swap_size=3, max_depth=2, scale_depth=True)
    with patch.applied(unet):
        first = run(unet, x, context)
    with patch.applied(unet):
        assert torch.equal(run(unet, x, context), first)
    assert torch.isfinite(first).all() and (first - run(unet, x, context)).abs().max() > 1e-4


# -- the instance is left as it was ------------------------------------------------------------------------------

def every_patch() -> list:
    return [FreeUPatch(1.1, 1.2, 0.9, 0.2, 1), FreeUPatch(1.3, 1.4, 0.9, 0.2, 2),
            projection_scale("attn1.", UNET_PROJECTIONS, 1.2, 0.8, 1.1, 0.9),
            projection_scale("attn2.", UNET_PROJECTIONS, 1.2, 0.8, 1.1, 0.9), shrink(2, 2.0),
            HyperTilePatch(64, 2, 1, True)]


def test_patches_leave_the_instance_exactly_as_it_was_also_after_an_error():
    unet = tiny_unet()
    x, context = inputs(32)  # FreeU_V2's per-sample normalisation needs more than one pixel at the deepest level
    before, base = hook_state(unet), run(unet, x, context)
    patches = tuple(every_patch())
    with module_patches_applied(unet, patches):
        stacked = run(unet, x, context)
        assert hook_state(unet) != before
    assert hook_state(unet) == before
    with pytest.raises(RuntimeError), module_patches_applied(unet, patches):
        run(unet, x[:, :3], context)  # wrong channel count: fails inside the patched block
    assert hook_state(unet) == before
    assert torch.equal(run(unet, x, context), base)
    assert (stacked - base).abs().max() > 1e-3


def test_a_patch_never_reaches_another_instance_of_the_same_class():
    patched, other = tiny_unet(), tiny_unet()
    x, context = inputs()
    expected = run(other, x, context)
    with module_patches_applied(patched, tuple(every_patch())):
        assert torch.equal(run(other, x, context), expected)
        assert not torch.equal(run(patched, x, context), expected)
