"""Model references: what handles hold instead of modules. An evicted module is really gone (no cycles, no
stray references) and a reference brings it back from its file under the same key; results are measured by what
they keep alive."""

from __future__ import annotations

import weakref

import pytest
import torch

from nodes.clip import ClipModel
from nodes.handles import UNetModel, VaeModel
from nodes.memory import result_sizeof
from nodes.models import ModelManager, save_checkpoint
from nodes.models.manager import ModelRef, module_bytes

from .test_models_manager import LINEAR_BYTES, Loader
from .tiny import assert_same_weights, tiny_family_models


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A tiny SDXL checkpoint (two text encoders) and the modules written to it."""
    unet, vae, encoders = tiny_family_models("sdxl")
    path = tmp_path_factory.mktemp("refs") / "sdxl.safetensors"
    return save_checkpoint(path, unet, vae, encoders, "sdxl"), (unet, vae, *encoders)


def test_evicted_components_are_freed_and_their_refs_reload_them(sdxl):
    path, originals = sdxl
    manager = ModelManager(device="cpu", ram_budget_bytes=None)
    loaded = manager.load_checkpoint(path)
    modules = (loaded.unet, loaded.vae, *(te.model for te in loaded.text_encoders))
    refs = [manager.ref(m) for m in modules]
    assert all(isinstance(r, ModelRef) and r.nbytes == 0 for r in refs)
    assert refs[0].config["cross_attention_dim"] == loaded.unet.config.cross_attention_dim
    alive = [weakref.ref(m) for m in modules]
    del loaded, modules

    manager.ram_budget_bytes = 1
    manager.get("other", Loader())  # evicts every component
    assert [a() for a in alive] == [None] * 4  # freed at once: nothing else held them, no cycles to collect
    reloaded = [r.module() for r in refs]
    for original, module, ref in zip(originals, reloaded, refs):
        assert_same_weights(original, module)
        assert manager.key_of(module) == ref.key and ref.module() is module


def test_reloading_one_text_encoder_keeps_its_cached_sibling(sdxl):
    path, originals = sdxl
    manager = ModelManager(device="cpu", ram_budget_bytes=None)
    loaded = manager.load_checkpoint(path)
    first, second = (manager.ref(te.model) for te in loaded.text_encoders)
    kept = first.module()
    for module in (loaded.unet, loaded.vae, kept):  # the second encoder becomes the least recently used
        manager.cached(manager.key_of(module))
    del loaded
    manager.ram_budget_bytes = manager.ram_used_bytes + LINEAR_BYTES - 1
    manager.get("other", Loader())
    assert second.key not in manager.cached_keys() and first.key in manager.cached_keys()
    assert_same_weights(originals[3], second.module())
    assert first.module() is kept


def test_refs_of_generic_entries_and_unmanaged_modules():
    manager = ModelManager(device="cpu", ram_budget_bytes=int(LINEAR_BYTES * 1.5))
    loader = Loader()
    ref = manager.ref(manager.get("a", loader))
    manager.get("b", Loader())  # evicts a
    assert "a" not in manager.cached_keys()
    assert isinstance(ref.module(), torch.nn.Linear) and loader.calls == 2 and manager.cached_keys() == ["a"]
    stranger = torch.nn.Linear(2, 2)
    assert manager.ref(stranger) is stranger


def test_checkpoints_of_a_family_share_one_tokenizer(tmp_path):
    unet, vae, encoders = tiny_family_models("sd15")
    paths = [save_checkpoint(tmp_path / f"m{i}.safetensors", unet, vae, encoders, "sd15") for i in range(2)]
    manager = ModelManager(device="cpu")
    first, second = (manager.load_checkpoint(p, components=("text_encoders",)) for p in paths)
    assert first.text_encoders[0].model is not second.text_encoders[0].model
    assert first.tokenizers[0] is second.tokenizers[0]


def test_results_count_tensor_storages_once_and_managed_handles_as_nothing(sdxl):
    base = torch.zeros(100, 100)
    assert result_sizeof([[base[:1]]]) == 40_000  # a view keeps its whole storage alive
    assert result_sizeof([[base, base[5:]], [{"samples": base.T}]]) == 40_000
    cond, pooled = torch.zeros(1, 77, 8), torch.zeros(1, 8)
    assert result_sizeof([[[[cond, {"pooled_output": pooled, "strength": 1.0}]]]]) == cond.nbytes + pooled.nbytes + \
        result_sizeof(1.0)

    path, originals = sdxl
    manager = ModelManager(device="cpu")
    loaded = manager.load_checkpoint(path)
    kwargs = dict(prediction="eps", latent_scale_factor=0.13025, family="sdxl", latent_space="sdxl")
    managed = UNetModel.build(manager.ref(loaded.unet), manager=manager, **kwargs)
    direct = UNetModel.build(originals[0], **kwargs)
    assert managed.unet is loaded.unet and managed.sdxl == direct.sdxl and managed.in_channels == direct.in_channels
    assert managed.nbytes == 0 and direct.nbytes == module_bytes(originals[0])
    vae = VaeModel(manager.ref(loaded.vae), manager)
    assert vae.nbytes == 0 and vae.downscale == VaeModel(originals[1]).downscale
    tokenizers = [te.tokenizer for te in loaded.text_encoders]
    clip = ClipModel([manager.ref(te.model) for te in loaded.text_encoders], tokenizers, "sdxl", manager=manager)
    assert clip.nbytes == 0 and clip.text_encoders["g"] is loaded.text_encoders[1].model
    assert clip.clone(layer_idx=-1).encoder_sources == clip.encoder_sources
    assert result_sizeof([[managed], [clip], [vae]]) < 1000
    assert result_sizeof([[direct]]) == module_bytes(originals[0])
