"""MODEL / VAE handles without the loaders: conventions, tiling, OOM fallback, SDXL conditioning, previews."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nodes.depth import depth_to_concat, normalize_per_image
from nodes.handles import UNetModel, VaeModel, sdxl_time_ids, tile_starts, tiled_map
from nodes.previews import effective_preview_method, latent_to_rgb, preview_image
from nodes.vae import grey_out, grow_mask

from .tiny import CONTEXT_DIM, tiny_unet, tiny_vae


@pytest.fixture(scope="module")
def vae() -> VaeModel:
    return VaeModel(tiny_vae())


def test_tile_starts_cover_and_end_flush():
    for size, tile, overlap in [(100, 32, 8), (64, 64, 0), (10, 32, 4), (96, 40, 16)]:
        starts = tile_starts(size, tile, overlap)
        covered = torch.zeros(size, dtype=torch.bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all()
        assert starts[-1] + min(tile, size) == size


def test_tiled_map_blends_to_the_untiled_result():
    x = torch.randn(2, 4, 20, 28)
    upsample = lambda t: F.interpolate(t, scale_factor=8, mode="nearest")[:, :3]  # noqa: E731
    tiled = tiled_map(upsample, x, tile=8, overlap=4, scale=8, out_channels=3)
    torch.testing.assert_close(tiled, upsample(x))


def test_encode_is_the_deterministic_posterior_mean_of_the_centre_crop(vae):
    pixels = torch.rand(2, 67, 70, 3)
    latent = vae.encode(pixels)
    assert latent.shape == (2, 4, 8, 8)
    torch.testing.assert_close(latent, vae.encode(pixels[:, 1:65, 3:67, :]))
    torch.testing.assert_close(latent, vae.encode(pixels))
    raw = vae.vae.encode(pixels[:, 1:65, 3:67, :].movedim(-1, 1) * 2 - 1).latent_dist.mean
    torch.testing.assert_close(latent, raw)


def test_decode_gives_an_image_in_unit_range(vae):
    image = vae.decode(torch.randn(1, 4, 6, 5) * 3)
    assert image.shape == (1, 48, 40, 3)
    assert image.min() >= 0 and image.max() <= 1


def test_tiled_decode_and_encode_shapes(vae):
    assert vae.decode_tiled(torch.randn(1, 4, 20, 12), 8, 2).shape == (1, 160, 96, 3)
    assert vae.encode_tiled(torch.rand(1, 128, 96, 3), 64, 32).shape == (1, 4, 16, 12)


class _SmallMemoryVae(VaeModel):
    """A VAE whose device only fits latents up to 8x8: bigger decodes raise the CUDA out-of-memory error."""

    def _decode_raw(self, latent):
        if latent.shape[-1] * latent.shape[-2] > 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._decode_raw(latent)


def test_decode_falls_back_to_tiles_on_out_of_memory():
    small = _SmallMemoryVae(tiny_vae())
    latent = torch.randn(1, 4, 8, 20)
    image = small.decode(latent)
    assert image.shape == (1, 64, 160, 3)
    torch.testing.assert_close(image, small.decode_tiled(latent, 8, 2))  # 8x8 tiles, as the fallback uses


def test_other_errors_are_not_swallowed():
    class Broken(VaeModel):
        def _decode_raw(self, latent):
            raise ValueError("bad latent")

    with pytest.raises(ValueError, match="bad latent"):
        Broken(tiny_vae()).decode(torch.randn(1, 4, 8, 8))


def test_sd1_unet_runs_and_rejects_a_mismatched_context():
    model = UNetModel.build(tiny_unet(), prediction="eps", latent_scale_factor=0.18215, family="sd15",
                            latent_space="sd1")
    assert model.extra_conds({"pooled_output": torch.ones(1, 8)}, 2, 8, 8) == {}
    out = model.apply_model(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 900.0]), torch.randn(2, 77, CONTEXT_DIM))
    assert out.shape == (2, 4, 8, 8) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="different model families"):
        model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), torch.randn(1, 77, CONTEXT_DIM + 1))


def test_inpaint_unet_takes_the_concat_channels():
    model = UNetModel.build(tiny_unet(in_channels=9), prediction="eps", latent_scale_factor=0.18215,
                            family="sd15_inpaint", latent_space="sd1")
    assert model.in_channels == 9
    out = model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([5.0]), torch.randn(1, 77, CONTEXT_DIM),
                            concat=torch.randn(1, 5, 8, 8))
    assert out.shape == (1, 4, 8, 8)


def test_sdxl_added_conditioning_from_pooled_output_and_sizes():
    model = UNetModel.build(tiny_unet(sdxl=True), prediction="eps", latent_scale_factor=0.13025, family="sdxl",
                            latent_space="sdxl")
    assert model.sdxl.time_ids == 6 and model.sdxl.pooled_dim == CONTEXT_DIM
    pooled = torch.randn(1, CONTEXT_DIM)
    extra = model.extra_conds({"pooled_output": pooled}, 3, 16, 12)
    assert extra["text_embeds"].shape == (3, CONTEXT_DIM)
    torch.testing.assert_close(extra["text_embeds"][2], pooled[0])
    assert extra["time_ids"][0].tolist() == [128, 96, 0, 0, 128, 96]
    explicit = model.extra_conds({"width": 1024, "height": 768, "crop_w": 8, "crop_h": 4, "target_width": 512,
                                  "target_height": 256}, 1, 16, 12)
    assert explicit["time_ids"][0].tolist() == [768, 1024, 4, 8, 256, 512]
    out = model.apply_model(torch.randn(3, 4, 16, 12), torch.tensor([3.0, 3.0, 3.0]),
                            torch.randn(3, 77, CONTEXT_DIM), **extra)
    assert out.shape == (3, 4, 16, 12)
    changed = model.apply_model(torch.zeros(1, 4, 16, 12), torch.tensor([3.0]), torch.zeros(1, 77, CONTEXT_DIM),
                                **model.extra_conds({"pooled_output": pooled * 5}, 1, 16, 12))
    same = model.apply_model(torch.zeros(1, 4, 16, 12), torch.tensor([3.0]), torch.zeros(1, 77, CONTEXT_DIM),
                             **model.extra_conds({"pooled_output": pooled}, 1, 16, 12))
    assert not torch.allclose(changed, same)


def test_refiner_time_ids_carry_the_aesthetic_score():
    assert sdxl_time_ids({}, 128, 128, 5) == [1024, 1024, 0, 0, 6.0]


def test_grow_mask_dilates_a_rounded_mask():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8, 8] = 0.7
    assert grow_mask(mask, 0).sum() == 1
    grown = grow_mask(mask, 3)
    assert grown.sum() == 9 and grown[..., 7:10, 7:10].eq(1).all()


def test_grey_out_sets_masked_pixels_to_half():
    pixels = torch.rand(1, 8, 8, 3)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    out = grey_out(pixels, mask)
    assert out[:, :4].eq(0.5).all()
    torch.testing.assert_close(out[:, 4:], pixels[:, 4:])


def test_depth_concat_is_latent_sized_and_normalized_per_image():
    depth = torch.stack([torch.linspace(0, 1, 64).repeat(64, 1), torch.full((64, 64), 0.3)]).unsqueeze(-1)
    concat = depth_to_concat(depth.expand(-1, -1, -1, 3))
    assert concat.shape == (2, 1, 8, 8)
    assert concat[0].min() == -1 and concat[0].max() == 1
    assert concat[1].eq(0).all()  # a flat depth map carries no depth information
    assert normalize_per_image(torch.tensor([[2.0, 4.0]]), 0, 1).tolist() == [[0.0, 1.0]]


def test_latent_previews():
    rgb = latent_to_rgb(torch.zeros(4, 6, 5), "sdxl")
    assert rgb.shape == (6, 5, 3)
    assert latent_to_rgb(torch.zeros(4, 6, 5), "custom") is None
    model = UNetModel.build(tiny_unet(), prediction="eps", latent_scale_factor=0.5, family="custom",
                            latent_space="custom", preview_vae=VaeModel(tiny_vae()))
    image = preview_image(model, torch.randn(2, 4, 8, 8))
    assert image.size == (64, 64)
    assert preview_image(model.__class__(**{**model.__dict__, "preview_vae": None}), torch.randn(1, 4, 8, 8)) is None


def test_preview_method_from_prompt_overrides_server_setting():
    class S:
        preview_method = "latent2rgb"

    assert effective_preview_method(S(), {}) == "latent2rgb"
    assert effective_preview_method(S(), {"preview_method": "none"}) == "none"
    assert effective_preview_method(S(), {"preview_method": "default"}) == "latent2rgb"


def test_inpaint_preparation_crops_mask_and_pixels_alike():
    from nodes.vae import prepare_inpaint

    pixels = torch.rand(1, 20, 19, 3)
    mask = torch.zeros(1, 20, 19)
    mask[:, 2:10, 1:9] = 1
    cropped_pixels, cropped_mask = prepare_inpaint(pixels, mask, 8)
    assert cropped_pixels.shape == (1, 16, 16, 3) and cropped_mask.shape == (1, 1, 16, 16)
    torch.testing.assert_close(cropped_pixels, pixels[:, 2:18, 1:17])
    torch.testing.assert_close(cropped_mask[0, 0], mask[0, 2:18, 1:17])
