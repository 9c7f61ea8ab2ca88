"""Model cache: load on first use, LRU eviction under a RAM budget, and placement on the compute device under
a VRAM budget.

Accounting is deliberately simple: the RAM budget bounds the total size of every cached model (wherever it is),
the VRAM budget bounds the models currently resident on the compute device. Models in use (inside ``use()``) are
never evicted or offloaded; when they alone exceed a budget the budget is exceeded rather than failing.
Dtype policy: float32 on CPU; on CUDA the diffusion model and text encoders use ``dtype`` (float16 unless set,
e.g. to bfloat16) and the VAE uses ``vae_dtype`` (bfloat16 where supported, else float32: SD/SDXL VAEs overflow
in float16). Components are cast once at load, so moves between devices never change precision.
Handles that outlive a cache entry hold a ``ModelRef`` (``manager.ref(module)``): the key and how to reload the
module, never the module, so evicting a model really frees its memory and a later use reloads it.
Not thread-safe: meant to be driven by the one execution worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from . import single_file
from .attention import use_sdpa
from .build import LoadedCheckpoint, TextEncoder, move_module
from .errors import ModelFileError

log = logging.getLogger(__name__)

VRAM_RESERVE_BYTES = 1 << 30
HALF_PRECISION_COMPONENTS = ("unet", "text_encoder", "controlnet", "clip_vision", "style_model", "gligen")


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared storage counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type == "meta":
            continue
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += tensor.untyped_storage().nbytes()
    return total


def _default_ram_budget() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return None


def trim_native_heap() -> None:
    """Give freed heap pages back to the OS: glibc keeps them otherwise, and the process's RSS stays up."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def _is_external(key: Hashable) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and key[0] == "external"


@dataclass
class _Entry:
    module: torch.nn.Module
    size: int
    component: str | None
    reload: Callable[[], torch.nn.Module] | None  # loads the module again through the manager, under the same key
    pins: int = 0


@dataclass(frozen=True, eq=False)
class ModelRef:
    """A managed model by key: `module()` is the cached module, reloaded from its file if it was evicted.

    Holds no weights (only the module's config), so whatever keeps a ModelRef keeps no memory alive."""

    manager: ModelManager
    key: Hashable
    reload: Callable[[], torch.nn.Module]
    config: object  # the module's config (diffusers FrozenDict, transformers PretrainedConfig; None if it has none)

    def module(self) -> torch.nn.Module:
        cached = self.manager.cached(self.key)
        return cached if cached is not None else self.reload()

    @property
    def nbytes(self) -> int:
        return 0


@dataclass
class _Shell:
    """Non-tensor facts of a loaded checkpoint, kept while its modules come and go."""

    info: LoadedCheckpoint
    present: dict[str, bool] = field(default_factory=dict)
    encoders: list[tuple] = field(default_factory=list)  # (spec, tokenizer) per text encoder


class ModelManager:
    def __init__(self, device: str | torch.device | None = None, ram_budget_bytes: int | None = None,
                 vram_budget_bytes: int | None = None, dtype: torch.dtype | None = None,
                 vae_dtype: torch.dtype | None = None, offload_device: str | torch.device = "cpu") -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.ram_budget_bytes = ram_budget_bytes if ram_budget_bytes is not None else _default_ram_budget()
        self.vram_budget_bytes = vram_budget_bytes if vram_budget_bytes is not None else self._default_vram_budget()
        on_cuda = self.device.type == "cuda"
        self.dtype = dtype or (torch.float16 if on_cuda else torch.float32)
        bf16 = on_cuda and torch.cuda.is_bf16_supported()
        self.vae_dtype = vae_dtype or (torch.bfloat16 if bf16 else torch.float32)
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # RAM LRU, oldest first
        self._resident: OrderedDict[Hashable, None] = OrderedDict()  # on the compute device, oldest first
        self._by_module: dict[int, Hashable] = {}
        self._shells: dict[Hashable, _Shell] = {}
        self._tokenizers: dict[tuple, object] = {}  # one per tokenizer kind: each costs ~8 MB of vocabulary

    def _default_vram_budget(self) -> int | None:
        if self.device.type != "cuda":
            return None
        total = torch.cuda.get_device_properties(self.device).total_memory
        return max(0, total - VRAM_RESERVE_BYTES)

    # -- policy --------------------------------------------------------------------------------------------
    def dtype_for(self, component: str | None) -> torch.dtype | None:
        """float32 for everything on CPU; on CUDA the policy dtypes for known components, else keep as loaded."""
        if self.device.type == "cpu":
            return torch.float32
        if component == "vae":
            return self.vae_dtype
        return self.dtype if component in HALF_PRECISION_COMPONENTS else None

    @property
    def ram_used_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    @property
    def vram_used_bytes(self) -> int:
        return sum(self._entries[k].size if k in self._entries else 0 for k in self._resident)

    def cached_keys(self) -> list[Hashable]:
        """Cached model keys, least recently used first."""
        return list(self._entries)

    def resident_keys(self) -> list[Hashable]:
        """Keys of models on the compute device, least recently used first."""
        return list(self._resident)

    def key_of(self, module: torch.nn.Module) -> Hashable | None:
        return self._by_module.get(id(module))

    def cached(self, key: Hashable) -> torch.nn.Module | None:
        """The module cached under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.module

    def ref(self, module: torch.nn.Module) -> ModelRef | torch.nn.Module:
        """A ModelRef for a module this manager loaded (what handles hold); any other module comes back as is."""
        key = self._by_module.get(id(module))
        entry = self._entries.get(key) if key is not None else None
        if entry is None or entry.reload is None:
            return module
        return ModelRef(self, key, entry.reload, getattr(module, "config", None))

    # -- generic cache -------------------------------------------------------------------------------------
    def get(
        self, key: Hashable, loader: Callable[[], torch.nn.Module], component: str | None = None
    ) -> torch.nn.Module:
        """The cached module for ``key``, or ``loader()`` cast to the component's dtype (see ``dtype_for``) and
        cached. ``key`` should cover everything the loader depends on (path, component, options)."""
        cached = self.cached(key)
        if cached is not None:
            return cached
        module = loader()
        self._put(key, module, component, {key}, partial(self.get, key, loader, component))
        return module

    def _put(self, key: Hashable, module: torch.nn.Module, component: str | None, protect: set[Hashable],
             reload: Callable[[], torch.nn.Module] | None) -> None:
        move_module(module, self.offload_device, self.dtype_for(component))
        use_sdpa(module.eval())
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(module, module_bytes(module), component, reload)
        self._by_module[id(module)] = key
        self._evict_ram(protect | {key})
        trim_native_heap()  # the file's read buffers and any evicted weights are free now: give the pages back

    def _evict_ram(self, protect: set[Hashable]) -> None:
        if self.ram_budget_bytes is None:
            return
        for key in list(self._entries):
            if self.ram_used_bytes <= self.ram_budget_bytes:
                break
            if key not in protect and self._entries[key].pins == 0:
                self._drop(key)
        if self.ram_used_bytes > self.ram_budget_bytes:
            used, budget = self.ram_used_bytes, self.ram_budget_bytes
            log.warning("model cache over its RAM budget (%d > %d bytes): models in use", used, budget)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self._resident.pop(key, None)
        self._by_module.pop(id(entry.module), None)

    # -- device placement ----------------------------------------------------------------------------------
    def _modules_of(self, items: Sequence) -> list[torch.nn.Module]:
        modules: list[torch.nn.Module] = []
        for item in items:
            if isinstance(item, LoadedCheckpoint):
                modules += [m for m in (item.unet, item.vae) if m is not None] + [te.model for te in item.text_encoders]
            elif isinstance(item, TextEncoder):
                modules.append(item.model)
            elif isinstance(item, torch.nn.Module):
                modules.append(item)
            elif item is not None:
                raise TypeError(f"use() takes modules, TextEncoders or LoadedCheckpoints, not {type(item).__name__}")
        return modules

    @contextlib.contextmanager
    def use(self, *items) -> Iterator:
        """Put the given models (modules, TextEncoders, LoadedCheckpoints) on the compute device for the block,
        offloading least-recently-used resident models first so that the VRAM budget holds; yields the item
        (one) or the items (several), moved in place. Models stay resident afterwards until space is needed."""
        modules = self._modules_of(items)
        keys = []
        for module in modules:
            key = self._by_module.get(id(module))
            if key is None:  # unmanaged: tracked for placement only
                key = ("external", id(module))
                self._entries[key] = _Entry(module, module_bytes(module), "external", None)
                self._by_module[id(module)] = key
            keys.append(key)
            self._entries[key].pins += 1
        try:
            self._make_room([k for k in keys if k not in self._resident])
            for key in keys:
                entry = self._entries[key]
                if key not in self._resident:
                    move_module(entry.module, self.device)
                self._resident[key] = None
                self._resident.move_to_end(key)
                self._entries.move_to_end(key)
            yield items[0] if len(items) == 1 else items
        finally:
            for key in keys:
                if key in self._entries:
                    self._entries[key].pins -= 1
                    if _is_external(key) and self._entries[key].pins == 0:
                        self._offload(key)
                        self._drop(key)

    def _make_room(self, incoming: list[Hashable]) -> None:
        if self.vram_budget_bytes is None:
            return
        needed = sum(self._entries[k].size for k in incoming)
        for key in list(self._resident):
            if self.vram_used_bytes + needed <= self.vram_budget_bytes:
                return
            if self._entries[key].pins == 0:
                self._offload(key)

    def _offload(self, key: Hashable) -> None:
        move_module(self._entries[key].module, self.offload_device)
        self._resident.pop(key, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def offload_all(self) -> None:
        """Move every unpinned model off the compute device."""
        for key in list(self._resident):
            if self._entries[key].pins == 0:
                self._offload(key)

    def free(self) -> None:
        """Unload everything (the server's /free): drops all cached models and checkpoint facts."""
        self.offload_all()
        for key in list(self._entries):
            self._drop(key)
        self._shells.clear()
        self._tokenizers.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        trim_native_heap()

    # -- model files ---------------------------------------------------------------------------------------
    def _load_dtype(self) -> torch.dtype | None:
        # CPU: build in float32 directly; CUDA: keep file dtype, each component is cast once in _put
        return torch.float32 if self.device.type == "cpu" else None

    def load_checkpoint(self, path: str | Path, config_hint: str | Path | None = None,
                        prediction_type: str | None = None,
                        components: Sequence[str] = single_file.ALL_COMPONENTS,
                        interrupt: Callable[[], None] | None = None) -> LoadedCheckpoint:
        """The checkpoint's components, loading the missing ones; ``interrupt()`` runs before each component load."""
        base = ("checkpoint", str(Path(path).resolve()), str(config_hint) if config_hint else None, prediction_type)
        shell = self._shells.get(base)
        missing = [c for c in components if shell is None or not self._has(base, shell, c)]
        if missing:
            loaded = single_file.load_checkpoint(path, config_hint, prediction_type, self._load_dtype(), missing,
                                                 interrupt)
            shell = self._remember(base, shell, loaded, missing)
        return self._assemble(base, shell, components)

    def load_unet(
        self, path: str | Path, config_hint: str | None = None, prediction_type: str | None = None
    ) -> LoadedCheckpoint:
        base = ("unet", str(Path(path).resolve()), config_hint, prediction_type)
        shell = self._shells.get(base)
        if shell is None or not self._has(base, shell, "unet"):
            loaded = single_file.load_unet(path, config_hint, prediction_type, self._load_dtype())
            shell = self._remember(base, shell, loaded, ["unet"])
        return self._assemble(base, shell, ["unet"])

    def load_vae(self, path: str | Path) -> AutoencoderKL:
        key = ("vae", str(Path(path).resolve()))
        return self.get(key, lambda: single_file.load_vae(path, self._load_dtype()), "vae")

    def load_file_module(self, kind: str, path: str | Path, build: Callable[..., torch.nn.Module],
                         component: str | None = None) -> torch.nn.Module:
        """The module `build(path, dtype)` makes from a model file, cached under (kind, path); `kind` names what it
        is (several kinds may come from one file, e.g. an unCLIP checkpoint's CLIP vision tower)."""
        key = (kind, str(Path(path).resolve()))
        return self.get(key, lambda: build(path, self._load_dtype()), component)

    def load_text_encoder(self, path: str | Path, kind: str | None = None) -> TextEncoder:
        key = ("text_encoder", str(Path(path).resolve()), kind)
        shell = self._shells.get(key)
        if key in self._entries and shell is not None:
            self._entries.move_to_end(key)
            spec, tokenizer = shell.encoders[0]
            return TextEncoder(spec, self._entries[key].module, tokenizer)
        encoder = single_file.load_text_encoder(path, kind, self._load_dtype())
        self._put(key, encoder.model, "text_encoder", {key}, lambda: self.load_text_encoder(path, kind).model)
        encoder = replace(encoder, tokenizer=self._shared_tokenizer(encoder))
        self._shells[key] = _Shell(info=None, encoders=[(encoder.spec, encoder.tokenizer)])
        return encoder

    def _has(self, base: Hashable, shell: _Shell, component: str) -> bool:
        if component not in shell.present:
            return False
        if not shell.present[component]:
            return True
        if component == "text_encoders":
            return all((*base, "text_encoder", i) in self._entries for i in range(len(shell.encoders)))
        return (*base, component) in self._entries

    def _remember(self, base, shell: _Shell | None, loaded: LoadedCheckpoint, loaded_components) -> _Shell:
        if shell is None:
            shell = _Shell(info=replace(loaded, unet=None, vae=None, text_encoders=[]))
        protect = {k for k in self._entries if isinstance(k, tuple) and k[: len(base)] == base}
        protect |= {(*base, c) for c in ("unet", "vae")}
        protect |= {(*base, "text_encoder", i) for i in range(len(loaded.text_encoders))}
        for component in loaded_components:
            if component == "text_encoders":
                shell.present[component] = bool(loaded.text_encoders)
                shell.encoders = [(te.spec, self._shared_tokenizer(te)) for te in loaded.text_encoders]
                for i, te in enumerate(loaded.text_encoders):
                    key = (*base, "text_encoder", i)
                    if key not in self._entries:  # a still-cached sibling stays the module handles run
                        self._put(key, te.model, "text_encoder", protect, partial(self._reload, base, component, i))
            else:
                module = getattr(loaded, component)
                shell.present[component] = module is not None
                if module is not None:
                    self._put((*base, component), module, component, protect, partial(self._reload, base, component))
        self._shells[base] = shell
        return shell

    def _shared_tokenizer(self, encoder: TextEncoder) -> object:
        """The first tokenizer loaded from the same files with the same settings (checkpoints of a family share it)."""
        tokenizer = encoder.tokenizer
        key = (encoder.spec.tokenizer, getattr(tokenizer, "name_or_path", None), type(tokenizer))
        return self._tokenizers.setdefault(key, tokenizer) if key[1] else tokenizer

    def _reload(self, base: tuple, component: str, index: int | None = None) -> torch.nn.Module:
        """One component of a checkpoint (or bare UNet) file again, cached under the key it had."""
        kind, path, config_hint, prediction_type = base
        if kind == "unet":
            loaded = self.load_unet(path, config_hint, prediction_type)
        else:
            loaded = self.load_checkpoint(path, config_hint, prediction_type, components=[component])
        module = loaded.text_encoders[index].model if index is not None else getattr(loaded, component)
        if module is None:
            raise ModelFileError(f"{Path(path).name}: its {component} is gone from the file")
        return module

    def _assemble(self, base, shell: _Shell, components: Sequence[str]) -> LoadedCheckpoint:
        cached = self.cached
        unet = cached((*base, "unet")) if "unet" in components else None
        vae = cached((*base, "vae")) if "vae" in components else None
        encoders = []
        if "text_encoders" in components:
            for i, (spec, tokenizer) in enumerate(shell.encoders):
                encoders.append(TextEncoder(spec, cached((*base, "text_encoder", i)), tokenizer))
        return replace(shell.info, unet=unet, vae=vae, text_encoders=encoders)
