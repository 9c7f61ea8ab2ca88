"""ModelComputeDtype and TorchCompileModel on the tiny checkpoint: fp32 (and default) sample bit for bit like the
plain model, bf16 / fp16 change the sample only slightly, fp32 over a half-precision module is computed in fp32 and
leaves the module as it was; compile backends that cannot work here are refused with the reason."""

from __future__ import annotations

import pytest
import torch

from nodes.model_compute import Compute, compile_unavailable

from .test_sampling_patches import node, patched
from .tiny import tiny_unet


def _sample(env, patch: dict | None) -> torch.Tensor:
    return env.capture(patched(patch))["samples"]


def test_compute_dtype_fp32_is_the_default_and_half_dtypes_change_the_sample_slightly(env):
    plain = _sample(env, None)
    other_seed = env.capture(patched(None, seed=4))["samples"]
    seed_change = (other_seed - plain).norm() / plain.norm()
    assert torch.equal(_sample(env, node("ModelComputeDtype", dtype="default")), plain)
    assert torch.equal(_sample(env, node("ModelComputeDtype", dtype="fp32")), plain)
    for dtype in ("bf16", "fp16"):
        half = _sample(env, node("ModelComputeDtype", dtype=dtype))
        assert half.dtype == torch.float32 and not torch.equal(half, plain), dtype
        relative = (half - plain).norm() / plain.norm()
        # a half-precision forward of the random tiny UNet is ~1 % off; the sampler's x0 = x - sigma * eps
        # amplifies it at high sigma, still far below what another seed changes
        assert relative < 0.25 and relative < seed_change / 4, (dtype, float(relative), float(seed_change))
    assert torch.equal(_sample(env, None), plain)  # the cached base model is untouched


def _unet_call(unet, forward):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 3, unet.config.cross_attention_dim, generator=g)
    dtype = next(unet.parameters()).dtype
    with torch.no_grad():
        return forward(x.to(dtype), torch.tensor([500]), encoder_hidden_states=context.to(dtype)).sample.float()


def test_fp32_over_a_bf16_module_computes_in_fp32_and_restores_it():
    unet = tiny_unet().to(torch.bfloat16)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    reference = tiny_unet().to(torch.bfloat16).to(torch.float32)  # the same bf16 values, held in fp32
    with Compute(dtype=torch.float32).running(unet) as forward:
        got = _unet_call(unet, forward)
    torch.testing.assert_close(got, _unet_call(reference, reference), rtol=1e-5, atol=1e-5)
    after = unet.state_dict()
    assert all(after[k].dtype == torch.bfloat16 and torch.equal(after[k], v) for k, v in before.items())
    bf16 = _unet_call(unet, unet)
    assert not torch.equal(bf16, got)


def test_object_info_of_the_compute_nodes(env):
    info = env.registry.object_info()
    assert info["ModelComputeDtype"]["input"]["required"]["dtype"][0] == ["default", "fp32", "fp16", "bf16"]
    assert info["ModelComputeDtype"]["category"] == "advanced/debug/model"
    assert info["TorchCompileModel"]["input"]["required"]["backend"][0] == ["inductor", "cudagraphs"]
    assert info["TorchCompileModel"]["output"] == ["MODEL"] and info["TorchCompileModel"]["experimental"] is True


def test_cudagraphs_on_a_cpu_model_is_refused_with_the_reason(env):
    assert compile_unavailable("cudagraphs", torch.device("cpu")) is not None
    result = env.run(patched(node("TorchCompileModel", backend="cudagraphs")))
    assert not result.ok
    assert "cudagraphs" in str(result.error) and "CUDA device" in str(result.error)


def test_inductor_without_a_cpp_compiler_is_refused(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    reason = compile_unavailable("inductor", torch.device("cpu"))
    assert reason is not None and "C++ compiler" in reason



def test_a_compiled_forward_predicts_like_the_plain_one():
    """The compile path with dynamo's "eager" backend (graph capture without code generation) on a small module:
    inductor, the node's default, spends minutes of C++ compilation on a diffusers UNet on a small CPU, and even
    dynamo's capture of the tiny UNet takes ~50 s here. Measured once on the tiny checkpoint: inductor gave the
    same 3-step sample within 6e-4 (12 min to compile on a busy 2-core machine, 0.5 s for the run after it)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 4, 8, 8)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad(), Compute(backend="eager").running(net) as forward:
        got = forward(x)
        assert forward is not net and counters["stats"]["unique_graphs"] > graphs  # dynamo captured it
        torch.testing.assert_close(got, net(x), rtol=1e-6, atol=1e-6)
    with torch.no_grad(), Compute(backend="eager", dtype=torch.bfloat16).running(net) as forward:
        assert forward(x).dtype == torch.bfloat16  # compiled and autocast together
