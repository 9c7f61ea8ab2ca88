"""Initial noise (golden §3.1)."""
import pytest
import torch

from nodes.samplers.noise import prepare_noise
from tests.samplers.golden import manifest, tensors


@pytest.mark.parametrize("entry", manifest()["noise"]["entries"], ids=lambda e: e["key"])
def test_noise_is_bit_exact(entry):
    latent = torch.zeros(entry["shape"])
    noise = prepare_noise(latent, entry["seed"], entry["batch_index"])
    assert torch.equal(noise, tensors("noise")[entry["key"]])


def test_only_low_32_bits_of_the_seed_matter():
    latent = torch.zeros(1, 4, 8, 8)
    assert torch.equal(prepare_noise(latent, 2**32 + 5), prepare_noise(latent, 5))
    assert not torch.equal(prepare_noise(latent, 6), prepare_noise(latent, 5))


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_out_of_range_seeds_raise(seed):
    with pytest.raises(ValueError):
        prepare_noise(torch.zeros(1, 4, 8, 8), seed)


def test_batch_index_keeps_the_noise_of_the_full_batch():
    full = prepare_noise(torch.zeros(6, 4, 8, 8), 42, list(range(6)))
    picked = prepare_noise(torch.zeros(3, 4, 8, 8), 42, [4, 1, 4])
    assert torch.equal(picked, full[[4, 1, 4]])


def test_noise_follows_the_latent_dtype():
    noise = prepare_noise(torch.zeros(1, 4, 8, 8, dtype=torch.float16), 3)
    assert noise.dtype == torch.float16
    assert torch.equal(noise, prepare_noise(torch.zeros(1, 4, 8, 8), 3).half())
