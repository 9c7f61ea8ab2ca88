"""LoraLoader / LoraLoaderModelOnly through the real executor: strengths, warm-cache isolation from the base model,
stacking, cache signatures, unmatched keys reported by name, mismatched files refused with the file named."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from graphengine import Executor
from graphengine.validation import PromptValidationError

from .test_pipeline import base_nodes, capture, empty_latent, ksampler
from .tiny import tiny_sdxl_unet, tiny_text_encoder, tiny_unet

LORA = "tiny_lora.safetensors"


def kohya_lora(seed: int, scale: float = 0.3, te: bool = True, extra: dict | None = None) -> dict:
    """A kohya/sd-scripts file for the tiny SD1.5 checkpoint: every attention projection of the UNet (diffusers
    paths, as kohya's SD1 trainer writes them) and the text encoder's attention projections."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def add(key: str, weight: torch.Tensor, rank: int = 2) -> None:
        out, inp = weight.shape[0], weight.shape[1]
        sd[f"{key}.lora_down.weight"] = torch.randn(rank, inp, *weight.shape[2:], generator=g) * scale
        sd[f"{key}.lora_up.weight"] = torch.randn(out, rank, *((1, 1) if weight.ndim == 4 else ()), generator=g) * scale
        sd[f"{key}.alpha"] = torch.tensor(float(rank))

    for name, module in tiny_unet().named_modules():
        if "attentions" in name and isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v")):
            add("lora_unet_" + name.replace(".", "_"), module.weight)
    if te:
        for name, module in tiny_text_encoder().named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(("q_proj", "v_proj")):
                path = name if name.startswith("text_model.") else "text_model." + name
                add("lora_te_" + path.replace(".", "_"), module.weight)
    sd.update(extra or {})
    return sd


@pytest.fixture(scope="module")
def loras(env):
    folder = env.base / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(kohya_lora(1), str(folder / LORA))
    save_file(kohya_lora(2), str(folder / "other_lora.safetensors"))
    unknown = {"lora_unet_not_a_module.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_not_a_module.lora_down.weight": torch.zeros(2, 4)}
    save_file(kohya_lora(3, extra=unknown), str(folder / "with_unknown_key.safetensors"))
    # made for an SDXL-shaped UNet: its attention widths do not fit the SD1.5 model
    g = torch.Generator().manual_seed(4)
    xl = {}
    for name, module in tiny_sdxl_unet().named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith("attn2.to_k"):
            key = "lora_unet_" + name.replace(".", "_")
            xl[f"{key}.lora_down.weight"] = torch.randn(2, module.weight.shape[1], generator=g)
            xl[f"{key}.lora_up.weight"] = torch.randn(module.weight.shape[0], 2, generator=g)
    save_file(xl, str(folder / "sdxl_lora.safetensors"))
    (folder / "corrupt.safetensors").write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{\"a\": not json at all}")
    return folder


def lora_node(name: str = LORA, model=None, clip=None, strength_model: float = 0.8,
              strength_clip: float = 0.8) -> dict:
    return {"class_type": "LoraLoader", "inputs": {
        "model": model or ["ckpt", 0], "clip": clip or ["ckpt", 1], "lora_name": name,
        "strength_model": strength_model, "strength_clip": strength_clip}}


def graph(lora: dict | None = None, *, second: dict | None = None) -> dict:
    """txt2img latent; with `lora`, MODEL and CLIP come from it (and from `second`, chained after it)."""
    nodes = {**base_nodes(), "empty": empty_latent()}
    model, clip = ["ckpt", 0], ["ckpt", 1]
    if lora is not None:
        nodes["lora"] = lora
        model, clip = (["lora", 0], ["lora", 1]) if lora["class_type"] == "LoraLoader" else (["lora", 0], clip)
    if second is not None:
        nodes["lora2"] = {**second, "inputs": {**second["inputs"], "model": model, "clip": clip}}
        model, clip = ["lora2", 0], ["lora2", 1]
    nodes["pos"]["inputs"]["clip"] = clip
    nodes["neg"]["inputs"]["clip"] = clip
    nodes["sample"] = ksampler(["empty", 0], seed=3, model=model)
    nodes["out"] = capture(["sample", 0])
    nodes["cond"] = capture(["pos", 0])
    return nodes


def run(executor: Executor, prompt: dict):
    result = executor.execute(prompt)
    assert result.ok, result.error
    return result


def samples(result) -> torch.Tensor:
    return result.outputs["out"]["value"][0]["samples"]


def cond(result) -> torch.Tensor:
    return result.outputs["cond"]["value"][0][0][0]


def test_loras_are_listed_in_object_info_with_comfyui_inputs(env, loras):
    info = env.registry.object_info()
    required = info["LoraLoader"]["input"]["required"]
    assert LORA in required["lora_name"][0]
    assert required["strength_model"] == ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}]
    assert required["strength_clip"][1]["default"] == 1.0
    assert info["LoraLoader"]["output"] == ["MODEL", "CLIP"]
    assert list(info["LoraLoaderModelOnly"]["input"]["required"]) == ["model", "lora_name", "strength_model"]


def test_strength_zero_is_the_base_model_bit_for_bit(env, loras):
    executor = Executor(env.registry)
    base = run(executor, graph())
    zero = run(Executor(env.registry), graph(lora_node(strength_model=0.0, strength_clip=0.0)))
    assert torch.equal(samples(base), samples(zero))
    assert torch.equal(cond(base), cond(zero))


def test_a_lora_never_touches_the_cached_base_model_in_either_order(env, loras):
    alone_base = samples(run(Executor(env.registry), graph()))
    alone_lora = samples(run(Executor(env.registry), graph(lora_node())))
    assert not torch.equal(alone_base, alone_lora)
    warm = Executor(env.registry)  # one result cache and one model manager for the whole sequence
    sequence = [graph(lora_node()), graph(), graph(lora_node()), graph()]
    got = [samples(run(warm, prompt)) for prompt in sequence]
    for value, expected in zip(got, [alone_lora, alone_base, alone_lora, alone_base]):
        assert torch.equal(value, expected)


def test_model_and_clip_strengths_act_separately(env, loras):
    executor = Executor(env.registry)
    base = run(executor, graph())
    clip_only = run(executor, graph(lora_node(strength_model=0.0, strength_clip=1.0)))
    model_only = run(executor, graph(lora_node(strength_model=1.0, strength_clip=0.0)))
    assert not torch.equal(cond(clip_only), cond(base))
    assert torch.equal(cond(model_only), cond(base))
    assert not torch.equal(samples(model_only), samples(base))
    only_node = {"class_type": "LoraLoaderModelOnly",
                 "inputs": {"model": ["ckpt", 0], "lora_name": LORA, "strength_model": 1.0}}
    model_only_node = run(executor, graph(only_node))
    assert torch.equal(samples(model_only_node), samples(model_only))
    assert torch.equal(cond(model_only_node), cond(base))


def test_negative_strength_moves_the_other_way(env, loras):
    executor = Executor(env.registry)
    base = cond(run(executor, graph()))
    plus = cond(run(executor, graph(lora_node(strength_clip=0.5, strength_model=0.0))))
    minus = cond(run(executor, graph(lora_node(strength_clip=-0.5, strength_model=0.0))))
    assert (plus - base).flatten() @ (minus - base).flatten() < 0


def test_stacked_loras_differ_from_each_alone_and_depend_on_order_only_by_rounding(env, loras):
    executor = Executor(env.registry)
    first = run(executor, graph(lora_node()))
    second = run(executor, graph(lora_node("other_lora.safetensors")))
    both = run(executor, graph(lora_node(), second=lora_node("other_lora.safetensors")))
    swapped = run(executor, graph(lora_node("other_lora.safetensors"), second=lora_node()))
    for result in (first, second):
        assert not torch.equal(samples(both), samples(result))
        assert not torch.equal(cond(both), cond(result))
    # W + a + b vs W + b + a: float32 rounding only (the untrained UNet amplifies it over the steps)
    torch.testing.assert_close(cond(both), cond(swapped), rtol=1e-5, atol=1e-5)
    assert (samples(both) - samples(swapped)).abs().max() < 1e-2 * samples(both).abs().max()


def test_changing_a_strength_reruns_only_what_depends_on_it(env, loras):
    executor = Executor(env.registry)
    run(executor, graph(lora_node(strength_model=0.8, strength_clip=0.8)))
    again = run(executor, graph(lora_node(strength_model=0.8, strength_clip=0.8)))
    assert "lora" not in again.executed and "sample" not in again.executed
    changed = run(executor, graph(lora_node(strength_model=0.5, strength_clip=0.8)))
    assert {"lora", "pos", "neg", "sample"} <= set(changed.executed)
    assert "ckpt" not in changed.executed and "empty" not in changed.executed


def test_unmatched_keys_are_reported_by_name(env, loras, caplog):
    with caplog.at_level(logging.WARNING, logger="graphengine.nodes.lora"):
        run(Executor(env.registry), graph(lora_node("with_unknown_key.safetensors")))
    messages = [r.getMessage() for r in caplog.records]
    assert any("lora key not loaded: lora_unet_not_a_module.lora_down.weight" in m for m in messages)
    assert any("lora key not loaded: lora_unet_not_a_module.lora_up.weight" in m for m in messages)


def test_a_lora_for_another_family_fails_naming_the_file(env, loras):
    result = Executor(env.registry).execute(graph(lora_node("sdxl_lora.safetensors")))
    assert result.status == "error"
    assert result.error["node_id"] == "lora" and result.error["node_type"] == "LoraLoader"
    assert "sdxl_lora.safetensors" in result.error["exception_message"]
    assert "does not fit" in result.error["exception_message"]
    assert run(Executor(env.registry), graph()).ok  # the base model was left as it was


def test_a_missing_lora_file_is_a_validation_error(env, loras):
    with pytest.raises(PromptValidationError) as caught:
        Executor(env.registry).execute(graph(lora_node("nope.safetensors")))
    errors = caught.value.node_errors["lora"]["errors"]
    assert errors[0]["type"] == "value_not_in_list" and "nope.safetensors" in errors[0]["details"]


def test_a_corrupt_lora_file_fails_the_node_with_its_name_and_the_next_prompt_runs(env, loras):
    executor = Executor(env.registry)
    result = executor.execute(graph(lora_node("corrupt.safetensors")))
    assert result.status == "error" and result.error["node_id"] == "lora"
    assert "corrupt.safetensors" in result.error["exception_message"]
    assert run(executor, graph(lora_node())).ok
