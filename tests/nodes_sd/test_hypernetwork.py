"""HypernetworkLoader and TomePatchModel: hypernetwork files written in the A1111 layout with random weights, the
patched attention against a reference computed here by hand, both nodes through the real executor (ComfyUI's
inputs, identity settings bit-identical, base model untouched), and malformed files failing with their name."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from graphengine import Executor
from nodes.lora.applied import module_patches_applied
from nodes.model_patches.hypernetwork import HypernetworkError, HypernetworkPatch, load_hypernetwork
from nodes.models.state_dict import write_safetensors

from .test_lora_nodes import run, samples
from .test_module_patch_math import hook_state, inputs
from .test_module_patch_nodes import graph, patch_node
from .tiny import CONTEXT_DIM, tiny_unet

HN = "tiny_hn.pt"
WIDTHS = (CONTEXT_DIM, 64)  # the tiny UNet: cross-attention context 32; self-attention 32 and 64 channels


def a1111_network(width: int, g: torch.Generator, structure=(1, 2, 1), activation: str = "relu",
                  layer_norm: bool = True) -> OrderedDict:
    """One network's state dict as A1111 saves it: `linear.N` numbered over Linear, activation and LayerNorm."""
    state, index = OrderedDict(), 0
    for i in range(len(structure) - 1):
        fan_in, fan_out = int(width * structure[i]), int(width * structure[i + 1])
        state[f"linear.{index}.weight"] = torch.randn(fan_out, fan_in, generator=g) * 0.3
        state[f"linear.{index}.bias"] = torch.randn(fan_out, generator=g) * 0.1
        index += 1
        if activation != "linear" and i < len(structure) - 2:
            index += 1
        if layer_norm:
            state[f"linear.{index}.weight"] = 1 + torch.randn(fan_out, generator=g) * 0.1
            state[f"linear.{index}.bias"] = torch.randn(fan_out, generator=g) * 0.1
            index += 1
    return state


def a1111_file(seed: int = 0, widths=WIDTHS, activation: str = "relu", layer_norm: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    content = {"name": "tiny", "layer_structure": [1, 2, 1], "activation_func": activation,
               "is_layer_norm": layer_norm, "weight_initialization": "Normal", "use_dropout": False,
               "activate_output": False, "last_layer_dropout": False, "step": 10, "sd_checkpoint": None,
               "sd_checkpoint_name": None}
    for width in widths:
        content[width] = [a1111_network(width, g, activation=activation, layer_norm=layer_norm) for _ in range(2)]
    return content


def reference_net(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The file's Linear → relu → LayerNorm → Linear → LayerNorm stack, with the raw tensors."""
    h = F.layer_norm(F.relu(F.linear(x, state["linear.0.weight"], state["linear.0.bias"])), (x.shape[-1] * 2,),
                     state["linear.2.weight"], state["linear.2.bias"])
    y = F.linear(h, state["linear.3.weight"], state["linear.3.bias"])
    return F.layer_norm(y, (x.shape[-1],), state["linear.4.weight"], state["linear.4.bias"])


def reference_attention(attn, x: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of queries from x, keys/values from the given inputs, through the module's weights."""
    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], attn.heads, -1).transpose(1, 2)

    q, k, v = heads(attn.to_q(x)), heads(attn.to_k(k_in)), heads(attn.to_v(v_in))
    weights = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return attn.to_out[0](out)


@pytest.fixture(scope="module")
def hypernetworks(env) -> Path:
    folder = env.base / "models" / "hypernetworks"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(a1111_file(), folder / HN)
    content = a1111_file(seed=1, activation="gelu")
    torch.save(content, folder / "unknown_activation.pt")
    (folder / "truncated.pt").write_bytes((folder / HN).read_bytes()[:300])
    return folder


# -- the file and the patch ----------------------------------------------------------------------------------------

def test_strength_one_on_a_cross_and_a_self_attention_equals_the_hand_computed_reference(tmp_path):
    content = a1111_file(seed=2)
    torch.save(content, tmp_path / "hn.pt")
    unet = tiny_unet()
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    g = torch.Generator().manual_seed(5)
    x, context = torch.randn(2, 64, 32, generator=g), torch.randn(2, 7, CONTEXT_DIM, generator=g)
    nets_k, nets_v = content[CONTEXT_DIM]
    with torch.no_grad():
        for strength in (1.0, -0.5):
            expected_cross = reference_attention(block.attn2, x, context + reference_net(nets_k, context) * strength,
                                                 context + reference_net(nets_v, context) * strength)
            expected_self = reference_attention(block.attn1, x, x + reference_net(nets_k, x) * strength,
                                                x + reference_net(nets_v, x) * strength)
            patch = HypernetworkPatch(load_hypernetwork(tmp_path / "hn.pt"), strength)
            with module_patches_applied(unet, (patch,)):
                cross = block.attn2(x, encoder_hidden_states=context)
                self_attention = block.attn1(x)
            torch.testing.assert_close(cross, expected_cross, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(self_attention, expected_self, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(cross, block.attn2(x, encoder_hidden_states=context), atol=1e-3)


def test_a_safetensors_file_with_the_same_tensors_gives_the_same_networks(tmp_path):
    content = a1111_file(seed=3)
    torch.save(content, tmp_path / "hn.pt")
    flat = {f"{width}.{i}.{key}": tensor for width in WIDTHS for i, state in enumerate(content[width])
            for key, tensor in state.items()}
    write_safetensors(tmp_path / "hn.safetensors", flat, {"activation_func": "relu", "is_layer_norm": "True"})
    pickled, safe = load_hypernetwork(tmp_path / "hn.pt"), load_hypernetwork(tmp_path / "hn.safetensors")
    x = torch.randn(3, 64)
    for i in range(2):
        assert torch.equal(pickled[64][i](x), safe[64][i](x))


def test_an_old_file_without_activation_or_layer_norm_is_two_plain_linear_layers(tmp_path):
    content = {**a1111_file(seed=5, activation="linear", layer_norm=False), "activation_func": None}
    torch.save(content, tmp_path / "old.pt")
    state = content[64][1]
    x = torch.randn(3, 64)
    expected = F.linear(F.linear(x, state["linear.0.weight"], state["linear.0.bias"]), state["linear.1.weight"],
                        state["linear.1.bias"])
    torch.testing.assert_close(load_hypernetwork(tmp_path / "old.pt")[64][1](x), expected)


def test_the_patch_leaves_the_unet_as_it_was(tmp_path):
    torch.save(a1111_file(seed=4), tmp_path / "hn.pt")
    unet = tiny_unet()
    sample, context = inputs(16)
    clean = hook_state(unet)
    with torch.no_grad():
        base = unet(sample, 10, encoder_hidden_states=context).sample
        with module_patches_applied(unet, (HypernetworkPatch(load_hypernetwork(tmp_path / "hn.pt"), 1.0),)):
            patched = unet(sample, 10, encoder_hidden_states=context).sample
        after = unet(sample, 10, encoder_hidden_states=context).sample
    assert (patched - base).abs().max() > 1e-2
    assert torch.equal(after, base) and hook_state(unet) == clean


def malformed(tmp_path: Path, name: str, content) -> Path:
    torch.save(content, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("name, content, message", [
    ("activation.pt", a1111_file(activation="gelu"), "unsupported activation_func 'gelu'"),
    ("no_widths.pt", {"activation_func": "relu", "name": "x"}, "no width entries"),
    ("single.pt", {32: [a1111_network(32, torch.Generator())]}, "not a pair of state dicts"),
    ("wrong_width.pt", {32: [a1111_network(64, torch.Generator())] * 2}, "not a Linear layer taking 32 features"),
    ("no_norm.pt", {**a1111_file(layer_norm=False), "is_layer_norm": True}, "is not a LayerNorm of 64 features"),
    ("not_a_dict.pt", [torch.zeros(3)], "expected a dict"),
])
def test_a_malformed_file_fails_naming_it(tmp_path, name, content, message):
    with pytest.raises(HypernetworkError, match=message) as caught:
        load_hypernetwork(malformed(tmp_path, name, content))
    assert name in str(caught.value)


# -- the nodes through the executor --------------------------------------------------------------------------------

def hypernetwork_node(name: str = HN, strength: float = 1.0) -> dict:
    return patch_node("HypernetworkLoader", hypernetwork_name=name, strength=strength)


def test_object_info_has_comfyuis_inputs(env, hypernetworks):
    info = env.registry.object_info()
    loader = info["HypernetworkLoader"]
    assert list(loader["input"]["required"]) == ["model", "hypernetwork_name", "strength"]
    assert HN in loader["input"]["required"]["hypernetwork_name"][0]
    assert loader["input"]["required"]["strength"] == ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0,
                                                                 "step": 0.01}]
    assert loader["output"] == ["MODEL"] and loader["category"] == "loaders"
    tome = info["TomePatchModel"]
    assert tome["input"]["required"] == {"model": ["MODEL"],
                                         "ratio": ["FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01}]}
    assert tome["output"] == ["MODEL"] and tome["category"] == "_for_testing"


def test_identity_settings_are_bit_identical_and_others_change_the_result_not_the_base(env, hypernetworks):
    warm = Executor(env.registry)  # one result cache and one model manager for the whole sequence
    first = run(warm, graph())
    base = samples(first)
    unet = first.outputs["model"]["value"][0].unet
    clean = hook_state(unet)
    assert torch.equal(samples(run(warm, graph(hypernetwork_node(strength=0.0)))), base)
    assert torch.equal(samples(run(warm, graph(patch_node("TomePatchModel", ratio=0.0)))), base)
    other_seed = graph()
    other_seed["sample"]["inputs"]["seed"] = 6
    seed_change = (samples(run(warm, other_seed)) - base).abs().mean()
    results = {}
    for name, node in {"hypernetwork": hypernetwork_node(), "tome": patch_node("TomePatchModel", ratio=0.5)}.items():
        results[name] = samples(run(warm, graph(node)))
        change = (results[name] - base).abs().mean()
        assert torch.isfinite(results[name]).all() and change > 1e-3, name
        assert hook_state(unet) == clean, name
        assert torch.equal(samples(run(warm, graph())), base), name
        if name == "tome":  # merging similar queries moves the result much less than another seed does
            assert change < seed_change / 5
    for name, node in {"hypernetwork": hypernetwork_node(), "tome": patch_node("TomePatchModel", ratio=0.5)}.items():
        assert torch.equal(samples(run(Executor(env.registry), graph(node))), results[name]), name


@pytest.mark.parametrize("name, message", [("unknown_activation.pt", "activation_func 'gelu'"),
                                           ("truncated.pt", "truncated or corrupt")])
def test_a_malformed_file_fails_the_node_with_its_name_and_the_next_prompt_runs(env, hypernetworks, name, message):
    executor = Executor(env.registry)
    result = executor.execute(graph(hypernetwork_node(name)))
    assert result.status == "error" and result.error["node_id"] == "p0"
    assert name in result.error["exception_message"] and message in result.error["exception_message"]
    assert run(executor, graph(hypernetwork_node())).ok
