"""ModelManager with real (tiny) modules on CPU: RAM LRU eviction, VRAM-budget placement bookkeeping
(compute device = CPU here, so moves are no-ops but the accounting is the same), checkpoint caching."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from nodes.models import ModelFileError, ModelManager, save_checkpoint
from nodes.models.manager import module_bytes

from .tiny import assert_same_weights, tiny_family_models

LINEAR_BYTES = 64 * 64 * 4 + 64 * 4  # fp32 weight + bias


class Loader:
    """Builds a fresh Linear each call and counts the calls (the real work a cache must avoid)."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return torch.nn.Linear(64, 64)


def test_ram_lru_eviction_by_budget():
    manager = ModelManager(device="cpu", ram_budget_bytes=int(LINEAR_BYTES * 2.5))
    loaders = {name: Loader() for name in "abcd"}
    a = manager.get("a", loaders["a"])
    assert module_bytes(a) == LINEAR_BYTES
    manager.get("b", loaders["b"])
    manager.get("c", loaders["c"])  # over budget -> a (least recently used) goes
    assert manager.cached_keys() == ["b", "c"]
    assert manager.get("b", loaders["b"]) is manager.get("b", loaders["b"])  # hit, now most recent
    manager.get("d", loaders["d"])  # c is now the least recently used
    assert manager.cached_keys() == ["b", "d"]
    assert manager.ram_used_bytes == 2 * LINEAR_BYTES
    manager.get("a", loaders["a"])
    assert {k: v.calls for k, v in loaders.items()} == {"a": 2, "b": 1, "c": 1, "d": 1}


def test_models_in_use_are_not_evicted():
    manager = ModelManager(device="cpu", ram_budget_bytes=LINEAR_BYTES)
    a = manager.get("a", Loader())
    with manager.use(a):
        manager.get("b", Loader())
        assert manager.cached_keys() == ["a", "b"]  # over budget rather than dropping a model in use
    manager.get("c", Loader())
    assert manager.cached_keys() == ["c"]


def test_vram_budget_offloads_least_recently_used():
    manager = ModelManager(device="cpu", ram_budget_bytes=None, vram_budget_bytes=int(LINEAR_BYTES * 2.5))
    a, b, c = (manager.get(k, Loader()) for k in "abc")
    with manager.use(a) as used:
        assert used is a and manager.resident_keys() == ["a"]
    with manager.use(b):
        pass
    with manager.use(a):  # a becomes most recent
        pass
    with manager.use(c):  # b is offloaded to make room
        assert manager.resident_keys() == ["a", "c"]
    with manager.use(a, b, c):  # all pinned: nothing can go, budget is exceeded
        assert sorted(manager.resident_keys()) == ["a", "b", "c"]
    assert manager.vram_used_bytes == 3 * LINEAR_BYTES
    external = torch.nn.Linear(64, 64)
    with manager.use(external):
        assert len(manager.resident_keys()) == 2  # two managed ones were offloaded for it
    assert manager.key_of(external) is None
    manager.offload_all()
    assert manager.resident_keys() == []


def test_cpu_policy_and_sdpa():
    manager = ModelManager(device="cpu")
    assert manager.dtype_for("unet") == manager.dtype_for("vae") == torch.float32
    unet = UNet2DConditionModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                layers_per_block=1, sample_size=8).half()
    unet.set_attn_processor(AttnProcessor())
    cached = manager.get("u", lambda: unet)
    assert cached.dtype == torch.float32
    assert all(isinstance(p, AttnProcessor2_0) for p in cached.attn_processors.values())


@pytest.fixture
def checkpoint(tmp_path):
    unet, vae, encoders = tiny_family_models("sd15")
    return save_checkpoint(tmp_path / "sd15.safetensors", unet, vae, encoders, "sd15"), (unet, vae, encoders)


def test_checkpoint_components_are_cached_separately(checkpoint):
    path, (unet, vae, encoders) = checkpoint
    manager = ModelManager(device="cpu")
    first = manager.load_checkpoint(path)
    second = manager.load_checkpoint(path)
    assert first.unet is second.unet and first.vae is second.vae
    assert first.text_encoders[0].model is second.text_encoders[0].model
    assert (second.family.name, second.latent_scale_factor) == ("sd15", 0.18215)
    assert manager.ram_used_bytes == sum(module_bytes(m) for m in (unet, vae, encoders[0]))

    manager.ram_budget_bytes = manager.ram_used_bytes - 1
    manager.get("other", Loader())  # evicts the least recently used component: the UNet
    assert ("checkpoint", str(path.resolve()), None, None, "unet") not in manager.cached_keys()
    third = manager.load_checkpoint(path)  # reloads only the UNet
    assert third.vae is first.vae and third.unet is not first.unet
    assert_same_weights(unet, third.unet)

    manager.free()
    assert manager.cached_keys() == [] and manager.ram_used_bytes == 0
    path.unlink()
    with pytest.raises(ModelFileError, match="sd15.safetensors"):
        manager.load_checkpoint(path)


def test_manager_component_loaders(checkpoint):
    path, (unet, vae, encoders) = checkpoint
    manager = ModelManager(device="cpu")
    assert manager.load_vae(path) is manager.load_vae(path)
    te = manager.load_text_encoder(path)
    assert te.model is manager.load_text_encoder(path).model and te.kind == "clip_l"
    loaded_unet = manager.load_unet(path)
    assert loaded_unet.unet is manager.load_unet(path).unet and loaded_unet.family.name == "sd15"
    assert_same_weights(unet, loaded_unet.unet)
    with manager.use(loaded_unet, te):
        assert len(manager.resident_keys()) == 2
