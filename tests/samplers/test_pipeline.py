"""ksample behaviour beyond the golden runs: concat inputs, cancel, pass-through cases, options."""
import pytest
import torch

from nodes.samplers.ode import ODE_SAMPLERS
from nodes.samplers.pipeline import build_concat, ksample, ksample_advanced, prepare_denoise_mask
from tests.samplers.golden import all_run_entries, reference_output, replay, tensors, within_tolerance
from tests.samplers.toy import ToyModel, constant_conditioning, toy_network

POSITIVE = constant_conditioning(0.3)
NEGATIVE = constant_conditioning(-0.2)


class ConcatToy(ToyModel):
    """Toy with extra input channels: records every concat and lets it shift the output."""

    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels
        self.concats = []

    def apply_model(self, x_in, t, context, concat=None, **extra):
        assert concat is not None and concat.shape[1] == self.in_channels - 4
        self.concats.append(concat.clone())
        return toy_network(x_in, t, context) + concat.mean(dim=1, keepdim=True) * 0.01


def sample(model, latent, **kwargs):
    options = dict(seed=7, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal")
    options.update(kwargs)
    return ksample(model, positive=options.pop("positive", POSITIVE), negative=NEGATIVE, latent=latent, **options)


def test_inpaint_concat_from_conditioning_keys():
    image = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 64, 64)
    mask[:, :32] = 0.7  # rounds to 1
    concat = build_concat(
        9,
        {"concat_latent_image": image, "concat_mask": mask},
        shape=torch.Size([2, 4, 8, 8]),
        latent_scale_factor=0.18215,
        latent_in=None,
        denoise_mask=None,
    )
    assert concat.shape == (2, 5, 8, 8)
    assert torch.equal(concat[:, 0, :4], torch.ones(2, 4, 8)) and torch.equal(concat[:, 0, 4:], torch.zeros(2, 4, 8))
    assert torch.equal(concat[:, 1:], (image * 0.18215).expand(2, -1, -1, -1))


def test_inpaint_concat_falls_back_to_the_latent_and_its_noise_mask():
    latent_in = torch.randn(1, 4, 8, 8)
    denoise_mask = prepare_denoise_mask(tensors("inputs")["mask/mask64"], torch.Size([1, 4, 8, 8]))
    concat = build_concat(
        9, {}, shape=latent_in.shape, latent_scale_factor=0.18215, latent_in=latent_in, denoise_mask=denoise_mask
    )
    assert torch.equal(concat[:, :1], denoise_mask[:, :1].round())
    assert torch.equal(concat[:, 1:], latent_in)
    no_mask = build_concat(9, {}, shape=latent_in.shape, latent_scale_factor=1.0, latent_in=latent_in, denoise_mask=None)
    assert torch.equal(no_mask[:, :1], torch.ones(1, 1, 8, 8))


def test_depth_concat_and_plain_models():
    depth = torch.linspace(-1, 1, 16 * 16).reshape(1, 1, 16, 16)
    concat = build_concat(
        5, {"concat_depth": depth}, shape=torch.Size([2, 4, 8, 8]), latent_scale_factor=1.0, latent_in=None, denoise_mask=None
    )
    assert concat.shape == (2, 1, 8, 8) and float(concat.min()) >= -1 and float(concat.max()) <= 1
    with pytest.raises(ValueError, match="concat_depth"):
        build_concat(5, {}, shape=torch.Size([1, 4, 8, 8]), latent_scale_factor=1.0, latent_in=None, denoise_mask=None)
    assert build_concat(4, {}, shape=torch.Size([1, 4, 8, 8]), latent_scale_factor=1.0, latent_in=None, denoise_mask=None) is None


def test_inpaint_model_gets_mask_then_masked_latent_on_every_call():
    model = ConcatToy(9)
    latent = {"samples": tensors("inputs")["latent/sin_1x4x8x8"], "noise_mask": tensors("inputs")["mask/mask8"]}
    out = sample(model, latent)
    assert len(model.concats) == 3 and out["samples"].shape == (1, 4, 8, 8)
    expected_mask = tensors("inputs")["mask/mask8"].reshape(1, 1, 8, 8)
    for concat in model.concats:
        assert concat.shape == (2, 5, 8, 8)  # uncond and cond rows
        assert torch.equal(concat[:, :1], expected_mask.expand(2, -1, -1, -1))
        assert torch.allclose(concat[:, 1:], latent["samples"] * 0.18215)
    assert "noise_mask" in out


def test_callback_sees_every_step_and_an_exception_cancels():
    calls = []
    model = ToyModel(calls=calls)
    seen = []
    sample(model, {"samples": torch.zeros(1, 4, 8, 8)}, steps=4, callback=lambda *a: seen.append(a[:2]))
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]

    class Cancelled(Exception):
        pass

    def cancel_at_two(step, total, x0, x):
        if step == 2:
            raise Cancelled

    calls.clear()
    with pytest.raises(Cancelled):
        sample(model, {"samples": torch.zeros(1, 4, 8, 8)}, steps=4, callback=cancel_at_two)
    assert len(calls) == 3


def test_zero_denoise_and_late_start_return_the_input_latent():
    latent = {"samples": torch.randn(1, 4, 8, 8), "batch_index": [2]}
    assert torch.equal(sample(ToyModel(), latent, denoise=0.0)["samples"], latent["samples"])
    late = sample(ToyModel(), latent, steps=6, start_step=6, last_step=10000, disable_noise=True)
    assert torch.equal(late["samples"], latent["samples"]) and late["batch_index"] == [2]
    assert late["samples"] is not latent["samples"]


def test_ksample_advanced_maps_widgets_like_comfyui():
    key = "advanced/dpmpp_2m/karras/cfg5.0/add_noise=enable/start=2/end=4/leftover=enable/latent=sin"
    entry = all_run_entries()[key]
    out = ksample_advanced(
        ToyModel(),
        add_noise="enable",
        noise_seed=7,
        steps=6,
        cfg=5.0,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        positive=POSITIVE,
        negative=NEGATIVE,
        latent={"samples": tensors("inputs")["latent/sin_1x4x8x8"]},
        start_at_step=2,
        end_at_step=4,
        return_with_leftover_noise="enable",
    )
    assert within_tolerance(out["samples"], reference_output(entry))[0]


def test_sampler_options_reach_the_sampler():
    latent = {"samples": tensors("inputs")["latent/sin_1x4x8x8"]}
    euler = sample(ToyModel(), latent, sampler_name="euler", denoise=0.6)
    plain = sample(ToyModel(), latent, sampler_name="gradient_estimation", denoise=0.6, sampler_options={"ge_gamma": 1.0})
    assert torch.allclose(euler["samples"], plain["samples"], atol=1e-5)
    default = sample(ToyModel(), latent, sampler_name="gradient_estimation", denoise=0.6)
    assert not torch.allclose(euler["samples"], default["samples"], atol=1e-3)


def test_unknown_sampler_and_scheduler_raise():
    with pytest.raises(ValueError):
        sample(ToyModel(), {"samples": torch.zeros(1, 4, 8, 8)}, sampler_name="nope")
    with pytest.raises(ValueError):
        sample(ToyModel(), {"samples": torch.zeros(1, 4, 8, 8)}, scheduler="nope")


def test_replay_is_deterministic():
    entry = all_run_entries()["inpaint/ddim/normal/cfg5.0/den1.0"]
    assert torch.equal(replay(entry)["samples"], replay(entry)["samples"])


@pytest.mark.parametrize("name", sorted(ODE_SAMPLERS))
def test_short_and_partial_schedules_stay_finite(name):
    """1-3 steps, a schedule that starts below sigma_max, a trimmed schedule: no crash, finite output."""
    latent = {"samples": torch.full((1, 4, 8, 8), 0.3)}
    for steps, scheduler, denoise in [(1, "normal", 1.0), (2, "ddim_uniform", 1.0), (3, "beta", 0.5)]:
        out = sample(ToyModel(), latent, steps=steps, scheduler=scheduler, denoise=denoise, sampler_name=name)
        assert torch.isfinite(out["samples"]).all()
