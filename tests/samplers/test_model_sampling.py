"""ModelSamplingDiscrete against ComfyUI's numbers (golden §3.2, §3.6)."""
import pytest
import torch

from nodes.samplers.model_sampling import ModelSamplingDiscrete
from tests.samplers.golden import manifest, tensors


@pytest.fixture(scope="module")
def eps():
    return ModelSamplingDiscrete("eps")


@pytest.fixture(scope="module")
def vpred():
    return ModelSamplingDiscrete("v")


def test_sigma_table_is_exact(eps):
    table = tensors("schedules")
    assert torch.equal(eps.sigmas, table["model_sampling/sd15/sigmas"])
    assert torch.equal(eps.log_sigmas, table["model_sampling/sd15/log_sigmas"])
    float64 = torch.tensor(manifest()["schedules"]["model_sampling"]["sigmas_float64"], dtype=torch.float64)
    assert torch.equal(eps.sigmas64, float64)
    assert float(eps.sigma_min) == 0.029167158529162407
    assert float(eps.sigma_max) == 14.614641189575195


def test_v_model_shares_the_table(eps, vpred):
    assert torch.equal(eps.sigmas, vpred.sigmas)


def test_timestep_is_nearest_index(eps):
    probe = tensors("model_sampling")
    assert torch.equal(eps.timestep(probe["probe/sigma"]), probe["probe/timestep_index_int64"])
    assert eps.timestep(probe["probe/sigma"]).tolist() == manifest()["model_sampling"]["timestep_index"]


def test_sigma_of_t_interpolates_log_sigmas(eps):
    probe = tensors("model_sampling")
    assert torch.equal(eps.sigma(probe["sigma_of_t/t"]), probe["sigma_of_t/sigma"])


@pytest.mark.parametrize("percent, expected", sorted(manifest()["model_sampling"]["percent_to_sigma"].items()))
def test_percent_to_sigma(eps, percent, expected):
    assert eps.percent_to_sigma(float(percent)) == expected


@pytest.mark.parametrize("model, key", [("eps", "eps_sd15"), ("v", "v_sd20")])
def test_network_input_and_denoised(model, key):
    ms = ModelSamplingDiscrete(model)
    probe = tensors("model_sampling")
    sigma, x = probe["probe/sigma"], probe["probe/x"]
    assert torch.equal(ms.calculate_input(sigma, x), probe[f"probe/{key}/net_x_in"])
    assert torch.equal(ms.timestep(sigma).to(torch.float32), probe[f"probe/{key}/net_t"])
    denoised = ms.calculate_denoised(sigma, probe[f"probe/{key}/net_out"], x)
    assert torch.equal(denoised, probe[f"probe/{key}/denoised"])


def test_c_in(eps):
    probe = tensors("model_sampling")
    ones = torch.ones(31, 1, 1, 1)
    assert torch.equal(eps.calculate_input(probe["probe/sigma"], ones).flatten(), probe["probe/c_in"])


@pytest.mark.parametrize("case", manifest()["model_sampling"]["noise_scaling_cases"], ids=lambda c: c["key"])
def test_noise_scaling(eps, case):
    probe = tensors("model_sampling")
    scaled = eps.noise_scaling(
        torch.tensor(case["sigma"]), probe["noise_scaling/noise"], probe["noise_scaling/latent_in"], case["max_denoise"]
    )
    assert torch.equal(scaled, probe[case["key"]])


def test_inverse_noise_scaling_is_identity(eps):
    latent = torch.randn(1, 4, 8, 8)
    assert eps.inverse_noise_scaling(torch.tensor(0.0), latent) is latent


def test_max_denoise_rule(eps):
    assert eps.is_max_denoise(14.614640235900879)  # karras' first value, within rel 1e-5
    assert eps.is_max_denoise(20.0)
    assert not eps.is_max_denoise(14.5)


def test_linear_beta_schedule_differs_and_unknown_values_raise():
    linear = ModelSamplingDiscrete(beta_schedule="linear", linear_start=0.0001, linear_end=0.02)
    assert linear.sigmas.shape == (1000,) and float(linear.sigma_max) > 100
    with pytest.raises(ValueError):
        ModelSamplingDiscrete(prediction="flow")
    with pytest.raises(ValueError):
        ModelSamplingDiscrete(beta_schedule="cosine")
