"""The CLIP socket value: one or two transformers text encoders plus tokenizers, encoding prompts as ComfyUI does.

Families (encoder order for `text_encoders` / `tokenizers` given as sequences):
- "sd15":  [CLIP-L]; last layer; pooled = un-projected end-token state.
- "sd2":   [OpenCLIP-H]; penultimate layer + final layer norm; pad id 0.
- "sdxl":  [CLIP-L, OpenCLIP-G (with projection)]; both penultimate without final norm, concatenated on the
           feature axis (768 + 1280 = 2048 for real models); pooled = G's projected end-token state.
- "sdxl_refiner": [OpenCLIP-G (with projection)]; as G in "sdxl".
- "custom": one CLIP-L-style encoder of any size, treated like "sd15".
`text_encoders`/`tokenizers` may also be mappings keyed by role name ("l", "g", "h"); a single tokenizer object is
shared by every encoder. Pad ids come from the role (end token or 0), not from the tokenizer files.
Each encoder may be given as a module or as a model-manager reference (nodes.handles.ModuleSource): `text_encoders`
resolves it on access, so a cached CLIP keeps no weights alive after the manager evicts them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from ..comfy_compat.handles import ComfyClipMethods
from ..handles import held_bytes, live_module
from ..work import Progress
from .embeddings import load_embedding
from .encoder import EncoderRole, encode_windows, hidden_size
from .prompt_parser import PromptChunk, WeightedText, parse_prompt, parse_weights
from .tokenize import TokenizerSpec, Window, tokenize_prompt

_CLIP_L = EncoderRole("l", "clip_l", pad_with_end=True, default_layer=None, norm_hidden=True, projected_pooled=False)
_SDXL_L = EncoderRole("l", "clip_l", pad_with_end=True, default_layer=-2, norm_hidden=False, projected_pooled=False)
_CLIP_H = EncoderRole("h", "clip_h", pad_with_end=False, default_layer=-2, norm_hidden=True, projected_pooled=True)
_CLIP_G = EncoderRole("g", "clip_g", pad_with_end=False, default_layer=-2, norm_hidden=False, projected_pooled=True)

FAMILY_ROLES: dict[str, tuple[EncoderRole, ...]] = {
    "sd15": (_CLIP_L,),
    "custom": (_CLIP_L,),
    "sd2": (_CLIP_H,),
    "sdxl": (_SDXL_L, _CLIP_G),
    "sdxl_refiner": (_CLIP_G,),
}
# Which role's pooled output the family returns.
POOLED_ROLE = {"sd15": "l", "custom": "l", "sd2": "h", "sdxl": "g", "sdxl_refiner": "g"}

_KEEP = object()

Tokens = dict[str, list[Window]]


def _by_role(values: Any, roles: tuple[EncoderRole, ...], what: str) -> dict[str, Any]:
    names = [r.name for r in roles]
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"{what}: missing entries for {missing}")
        return {n: values[n] for n in names}
    if isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        if len(values) != len(names):
            raise ValueError(f"{what}: expected {len(names)} (for {names}), got {len(values)}")
        return dict(zip(names, values))
    return {n: values for n in names}  # one object shared by all roles (a tokenizer)


def _tokenizer_spec(tokenizer, role: EncoderRole) -> TokenizerSpec:
    start, end = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    return TokenizerSpec(start_id=start, end_id=end, pad_id=end if role.pad_with_end else 0)


class _LiveModules(Mapping):
    """Role name -> the live encoder module, fetched from its source on access."""

    def __init__(self, sources: dict[str, Any]) -> None:
        self._sources = sources

    def __getitem__(self, name: str) -> torch.nn.Module:
        return live_module(self._sources[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


class ClipModel(ComfyClipMethods):
    """What flows through CLIP sockets. Cheap to clone; clones share the encoder modules."""

    def __init__(self, text_encoders, tokenizers, family: str, embedding_dirs: Sequence[str | os.PathLike] = (),
                 manager: Any = None, layer_idx: int | None = None, weight_patches: tuple = (),
                 module_patches: tuple = ()) -> None:
        if family not in FAMILY_ROLES:
            raise ValueError(f"unknown CLIP family {family!r}; expected one of {sorted(FAMILY_ROLES)}")
        self.family = family
        self.roles = FAMILY_ROLES[family]
        self.encoder_sources: dict[str, Any] = _by_role(text_encoders, self.roles, "text_encoders")
        self.tokenizers: dict[str, Any] = _by_role(tokenizers, self.roles, "tokenizers")
        self.embedding_dirs = tuple(embedding_dirs)
        self.manager = manager
        self.layer_idx = layer_idx  # CLIPSetLastLayer override; None = each encoder's family default
        self.specs = {r.name: _tokenizer_spec(self.tokenizers[r.name], r) for r in self.roles}
        self.weight_patches = tuple(weight_patches)  # AppliedLora / AppliedMerge, applied while encoding
        # Behaviour patches with `applied(encoder)` (see nodes.handles.UNetModel.module_patches), applied to every
        # text encoder while encoding, after the weight patches.
        self.module_patches = tuple(module_patches)

    @property
    def text_encoders(self) -> Mapping[str, torch.nn.Module]:
        """Role name -> live encoder module (reloaded by the manager if it was evicted)."""
        return _LiveModules(self.encoder_sources)

    @property
    def nbytes(self) -> int:
        """Bytes this handle keeps alive: its encoders' weights when it holds modules, 0 with manager references."""
        from ..lora.applied import patches_nbytes
        return sum(held_bytes(s) for s in self.encoder_sources.values()) + patches_nbytes(self.weight_patches)

    def clone(self, layer_idx: Any = _KEEP, text_encoders: Any = None, weight_patches: Any = _KEEP,
              module_patches: Any = _KEEP) -> ClipModel:
        """A copy sharing the modules; `layer_idx` sets the clip-skip layer (-1 last, -2 penultimate, …),
        `text_encoders` (same shapes as the constructor's) swaps in other modules, `weight_patches` replaces
        the LoRA patches and `module_patches` the behaviour patches applied while encoding."""
        return ClipModel(self.encoder_sources if text_encoders is None else text_encoders, self.tokenizers,
                         self.family, self.embedding_dirs, self.manager,
                         self.layer_idx if layer_idx is _KEEP else layer_idx,
                         self.weight_patches if weight_patches is _KEEP else weight_patches,
                         self.module_patches if module_patches is _KEEP else module_patches)

    def with_module_patch(self, patch: Any) -> ClipModel:
        """A copy with one more module patch (see `module_patches`)."""
        return self.clone(module_patches=(*self.module_patches, patch))

    def slot_of(self, role: EncoderRole) -> str:
        """The LoRA slot of an encoder role: OpenCLIP-G is the second text encoder, the others the first."""
        return "te2" if role.name == "g" else "te1"

    def lora_targets(self) -> dict[str, torch.nn.Module]:
        """LoRA slot -> live encoder module, for matching a LoRA file."""
        return {self.slot_of(r): self.text_encoders[r.name] for r in self.roles}

    @contextlib.contextmanager
    def patched(self) -> Iterator[dict[str, torch.nn.Module]]:
        """LoRA slot -> live encoder, with the weight and module patches applied for the block (and then on the
        compute device; without patches the encoders stay where they are)."""
        modules = self.lora_targets()
        if not self.weight_patches and not self.module_patches:
            yield modules
            return
        from ..lora.applied import module_patches_applied, weights_patched

        with contextlib.ExitStack() as stack:
            if self.manager is not None:
                placed = stack.enter_context(self.manager.use(*modules.values()))
                placed = placed if isinstance(placed, (list, tuple)) else [placed]
                modules = {slot: m if isinstance(m, torch.nn.Module) else modules[slot]
                           for slot, m in zip(modules, placed)}
            stack.enter_context(weights_patched(modules, self.weight_patches))
            for module in modules.values():
                stack.enter_context(module_patches_applied(module, self.module_patches))
            yield modules

    def layer_for(self, role: EncoderRole) -> int | None:
        return role.default_layer if self.layer_idx is None else self.layer_idx

    def _finder(self, role: EncoderRole):
        size = hidden_size(self.encoder_sources[role.name])  # from the config: no need to load the weights
        return partial(load_embedding, roots=self.embedding_dirs, key=role.embedding_key, size=size)

    def tokenize(self, text: str, progress: Progress | None = None) -> Tokens:
        """Windows of (token id or embedding vector, weight) per encoder role; a huge text is tokenized in pieces
        with progress(i, n) before each (it may raise to stop)."""
        return {r.name: tokenize_prompt(text, self.tokenizers[r.name], self.specs[r.name], self._finder(r), progress)
                for r in self.roles}

    def encode_tokens(self, tokens: Tokens,
                      progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond [1, 77*k, dim], pooled [1, P]) from `tokenize`'s output; many windows run in several encoder
        calls with progress(i, n) before each (it may raise to stop)."""
        outputs = {}
        with self.patched():
            for role in self.roles:
                outputs[role.name] = encode_windows(self.text_encoders[role.name], tokens[role.name],
                                                    self.specs[role.name], role, self.layer_for(role),
                                                    self.manager, progress)
        conds = [outputs[r.name][0] for r in self.roles]
        length = min(c.shape[1] for c in conds)
        cond = torch.cat([c[:, :length] for c in conds], dim=-1)
        return cond, outputs[POOLED_ROLE[self.family]][1]

    def encode(self, text: str, progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encode_tokens(self.tokenize(text, progress), progress)

    def encode_conditioning(self, text: str, progress: Progress | None = None, **extras: Any) -> list:
        """ComfyUI CONDITIONING: [[cond, {"pooled_output": pooled, **extras}]]."""
        cond, pooled = self.encode(text, progress)
        return [[cond, {"pooled_output": pooled, **extras}]]

    def __repr__(self) -> str:
        return (f"ClipModel(family={self.family!r}, layer_idx={self.layer_idx!r}, loras={len(self.weight_patches)}, "
                f"module_patches={len(self.module_patches)})")


__all__ = ["ClipModel", "EncoderRole", "FAMILY_ROLES", "PromptChunk", "Tokens", "WeightedText", "parse_prompt",
           "parse_weights"]
