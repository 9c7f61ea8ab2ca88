"""`comfy.utils` and `comfy.model_management` as a pack uses them: progress events of the running node, the engine's
interrupt, weights-only file loading, resizing and tiling."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from graphengine import Executor, ExecutionInterrupted, Interrupted, Progress
from nodes.models.errors import ModelFileError

from .conftest import node


def test_progress_bar_sends_the_running_nodes_progress_events(env):
    def pack_function():
        utils = importlib.import_module("comfy.utils")
        bar = utils.ProgressBar(4)
        bar.update(1)
        bar.update(2)
        bar.update_absolute(10)  # clamped to the total
        return bar.current

    env.events.clear()
    assert env.call(pack_function) == 4
    progress = [(e.node, e.value, e.max) for e in env.events if isinstance(e, Progress)]
    assert progress == [("call", 1, 4), ("call", 3, 4), ("call", 4, 4)]


def test_progress_bar_outside_a_node_only_counts(env):
    utils = importlib.import_module("comfy.utils")
    bar = utils.ProgressBar(3)
    bar.update(2)
    assert bar.current == 2
    utils.set_progress_bar_enabled(False)
    try:
        env.events.clear()
        assert env.call(lambda: utils.ProgressBar(2).update(1)) is None
        assert not [e for e in env.events if isinstance(e, Progress)]
    finally:
        utils.set_progress_bar_enabled(True)


def test_interrupt_from_pack_code_interrupts_the_prompt(env):
    seen = {}

    def pack_function():
        mm = importlib.import_module("comfy.model_management")
        seen["before"] = mm.processing_interrupted()
        mm.interrupt_current_processing()
        seen["after"] = mm.processing_interrupted()
        mm.throw_exception_if_processing_interrupted()
        seen["not reached"] = True

    env.functions["interrupting"] = pack_function
    events = []
    executor = Executor(env.registry)
    executor.events.subscribe(events.append)
    result = executor.execute({"call": node("PackCall", key="interrupting")})
    assert result.status == "interrupted"
    assert seen == {"before": False, "after": True}
    interrupted = [e for e in events if isinstance(e, ExecutionInterrupted)]
    assert [e.node_id for e in interrupted] == ["call"]
    mm = importlib.import_module("comfy.model_management")
    assert issubclass(mm.InterruptProcessingException, Interrupted)
    assert not mm.processing_interrupted()  # outside a node


def test_devices_and_memory(env):
    mm = importlib.import_module("comfy.model_management")
    assert mm.get_torch_device() == env.registry.services.manager.device
    assert mm.intermediate_device() == torch.device("cpu")
    assert mm.unet_offload_device() == env.registry.services.manager.offload_device
    assert mm.get_free_memory(torch.device("cpu")) > 0
    free, torch_free = mm.get_free_memory(torch.device("cpu"), torch_free_too=True)
    assert free > 0 and torch_free > 0
    assert mm.get_total_memory(torch.device("cpu")) >= free
    assert mm.load_models_gpu([object()]) is None
    mm.soft_empty_cache()
    with pytest.raises(AttributeError, match="module 'comfy.model_management' has no attribute 'vram_state'"):
        mm.vram_state  # noqa: B018


def test_load_torch_file_is_weights_only(env, tmp_path):
    utils = importlib.import_module("comfy.utils")
    tensors = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "pt", "note": "x"})
    loaded, metadata = utils.load_torch_file(str(tmp_path / "w.safetensors"), return_metadata=True)
    assert torch.equal(loaded["a.weight"], tensors["a.weight"]) and metadata["note"] == "x"
    torch.save({"state_dict": tensors}, tmp_path / "w.ckpt")
    assert torch.equal(utils.load_torch_file(str(tmp_path / "w.ckpt"), safe_load=True)["b"], tensors["b"])
    torch.save({"weights": tensors, "evil": Interrupted("an arbitrary object")}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="refused"):
        utils.load_torch_file(str(tmp_path / "evil.pt"))


def test_common_upscale_and_tiled_scale(env):
    utils = importlib.import_module("comfy.utils")
    samples = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(utils.common_upscale(samples, 48, 32, "bilinear", "disabled"),
                       F.interpolate(samples, size=(32, 48), mode="bilinear"))
    assert utils.common_upscale(samples, 16, 16, "nearest-exact", "center").shape == (2, 3, 16, 16)

    def upscale2(tile: torch.Tensor) -> torch.Tensor:
        return tile.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2) * 0.5

    bar = utils.ProgressBar(100)
    tiled = utils.tiled_scale(samples, upscale2, tile_x=8, tile_y=8, overlap=2, upscale_amount=2,
                              out_channels=3, pbar=bar)
    assert torch.allclose(tiled, upscale2(samples), atol=1e-6)
    assert bar.current > 1  # one update per tile
    with pytest.raises(NotImplementedError, match="tile_x"):
        utils.tiled_scale(samples, upscale2, tile_x=8, tile_y=16)
    batch = utils.repeat_to_batch_size(torch.arange(2.0).reshape(2, 1), 5)
    assert batch.flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
