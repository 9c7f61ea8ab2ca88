"""LATENT_OPERATION nodes: the tone-map and sharpen formulas on exact inputs, applying them to a LATENT, and the
CFG pre-hook they become on a MODEL."""

import torch
import torch.nn.functional as F

from nodes.latent_operations import cfg_operation_hook, sharpen, tonemap_reinhard
from nodes.samplers.guidance import RunGuidance

from .conftest import lat, ramp


def test_tonemap_keeps_directions_and_compresses_lengths_reinhard_style():
    latent = ramp(2, 4, 3, 3)
    out = tonemap_reinhard(latent, multiplier=0.5)
    length = latent.norm(dim=1, keepdim=True) + 1e-10
    top = (length.mean(dim=(1, 2, 3), keepdim=True) + 5 * length.std(dim=(1, 2, 3), keepdim=True)) * 0.5
    expected_length = length * top / (length + top)  # l / (l / top + 1)
    assert torch.allclose(out.norm(dim=1, keepdim=True), expected_length, rtol=1e-5)
    assert torch.allclose(out / out.norm(dim=1, keepdim=True), latent / length, atol=1e-6)
    assert (out.norm(dim=1) < top.squeeze(1)).all()


def test_sharpen_kernel_and_limits():
    latent = ramp(1, 4, 6, 6) + 0.5
    radius, sigma, alpha = 2, 1.0, 0.3
    length = latent.norm(dim=1, keepdim=True) + 1e-6
    coords = torch.linspace(-1, 1, 5)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    gauss = torch.exp(-(x ** 2 + y ** 2) / 2)
    kernel = gauss / gauss.sum() * (-10 * alpha)
    kernel[2, 2] += 1 - kernel.sum()
    padded = F.pad(latent / length, (2, 2, 2, 2), mode="reflect")
    expected = torch.stack([F.conv2d(padded[:, c:c + 1], kernel[None, None]) for c in range(4)], dim=1)[:, :, 0]
    assert torch.allclose(sharpen(latent, radius, sigma, alpha), length * expected, atol=1e-5)
    assert torch.allclose(sharpen(latent, radius, sigma, 0.0), latent, atol=1e-5)  # alpha 0: identity
    uniform = torch.ones(1, 4, 5, 5) * torch.tensor([1.0, -2.0, 0.5, 3.0]).reshape(1, 4, 1, 1)
    assert torch.allclose(sharpen(uniform, 2, 2.0, 1.0), uniform, atol=1e-4)  # flat areas are untouched


def test_apply_operation_node_runs_the_operation_and_keeps_the_mask(run):
    s = ramp(2, 4, 3, 3)
    mask = torch.ones(1, 1, 24, 24)
    out = run("LatentApplyOperation", {"samples": ["a", 0], "operation": ["op", 0]},
              a=lat(s, noise_mask=mask, batch_index=[0, 1]),
              op={"class_type": "LatentOperationTonemapReinhard", "inputs": {"multiplier": 2.0}})
    assert torch.equal(out["samples"], tonemap_reinhard(s, 2.0))
    assert torch.equal(out["noise_mask"], mask) and out["batch_index"] == [0, 1]


def test_sharpen_node_bounds_and_small_latent_error(failure):
    errors = failure("LatentOperationSharpen", {"sharpen_radius": 32, "sigma": 1.0, "alpha": 0.1})
    assert errors[0]["type"] == "value_bigger_than_max"
    message = failure("LatentApplyOperation", {"samples": ["a", 0], "operation": ["op", 0]}, a=lat(ramp(1, 4, 3, 3)),
                      op={"class_type": "LatentOperationSharpen",
                          "inputs": {"sharpen_radius": 9, "sigma": 1.0, "alpha": 0.1}})
    assert "sharpen_radius 9" in message


def test_cfg_hook_applies_the_operation_to_cond_minus_uncond():
    cond, uncond, x = ramp(1, 4, 2, 2), ramp(1, 4, 2, 2).flip(-1) * 0.5, torch.zeros(1, 4, 2, 2)
    run = RunGuidance.start((cfg_operation_hook(lambda g: g * 3.0),))
    guided, uncond_out = run.combine(x, torch.ones(1), cond, uncond, 2.0)
    assert torch.equal(uncond_out, uncond)
    assert torch.allclose(guided, uncond + ((cond - uncond) * 3.0 + uncond - uncond) * 2.0, atol=1e-6)
