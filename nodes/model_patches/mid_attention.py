"""The UNet middle block's self-attention (attn1), perturbed or observed: the module patches behind
PerturbedAttentionGuidance and SelfAttentionGuidance (`nodes.samplers.attention_guidance` drives them).

ComfyUI addresses these layers as block ("middle", 0): PAG replaces the attention of every attn1 in it, SAG records
the attention map of its first transformer's attn1 only. In a diffusers UNet they are `mid_block.attentions[*]
.transformer_blocks[*].attn1`. Both patches are forward hooks on those instances, removed when the block ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
import torch

from .hooks import hook_set


def mid_self_attentions(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """Every attn1 of the middle block, in order (an error when there is none)."""
    mid = getattr(unet, "mid_block", None)
    found = [block.attn1 for attention in getattr(mid, "attentions", None) or ()
             for block in getattr(attention, "transformer_blocks", ()) if getattr(block, "attn1", None) is not None]
    if not found:
        raise ValueError("this model has no self-attention in its middle block (needed by PAG and SAG)")
    return found


def attention_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states an attention module was called with."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def identity_attention(attn: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The attention output with its attention map replaced by the identity: each token keeps its own value,
    so the output is the output projection of the value projection."""
    return attn.to_out[1](attn.to_out[0](attn.to_v(hidden)))


def attention_probabilities(attn: torch.nn.Module, hidden: torch.Tensor,
                            context: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T · scale) of a diffusers Attention for its input, [batch, heads, queries, keys]."""
    keys_from = hidden if context is None else context
    query = attn.head_to_batch_dim(attn.to_q(hidden))
    key = attn.head_to_batch_dim(attn.to_k(keys_from))
    probs = attn.get_attention_scores(query, key, None)
    return probs.reshape(hidden.shape[0], attn.heads, probs.shape[-2], probs.shape[-1])


@dataclass(frozen=True, eq=False)
class IdentityMidSelfAttention:
    """PAG's perturbation: every middle-block attn1 outputs `identity_attention` of its input."""

    @contextlib.contextmanager
    def applied(self, unet: torch.nn.Module) -> Iterator[None]:
        def perturbed(attn, args, kwargs, _output):
            return identity_attention(attn, attention_input(args, kwargs))

        with hook_set() as hooks:
            for attn in mid_self_attentions(unet):
                hooks.after_call(attn, perturbed)
            yield


@dataclass(eq=False)
class MidAttentionRecorder:
    """SAG's observer: records the attention probabilities of the middle block's first attn1 on every call while
    applied (the output is left alone); each `applied` starts a new recording. One recorder per sampling run."""

    maps: list[torch.Tensor] = field(default_factory=list)

    @contextlib.contextmanager
    def applied(self, unet: torch.nn.Module) -> Iterator[None]:
        self.maps.clear()

        def record(attn, args, kwargs, _output) -> None:
            with torch.no_grad():
                probs = attention_probabilities(attn, attention_input(args, kwargs),
                                                kwargs.get("encoder_hidden_states"))
            self.maps.append(probs.float())

        with hook_set() as hooks:
            hooks.after_call(mid_self_attentions(unet)[0], record)
            yield

    def attention(self, batch: int) -> torch.Tensor | None:
        """The first `batch` rows recorded ([batch, heads, n, n]; row chunks of one pass joined in order), or None
        when fewer were recorded. Maps of another token count (a later, area-cropped pass) are left out."""
        if not self.maps:
            return None
        tokens = self.maps[0].shape[-1]
        rows = torch.cat([m for m in self.maps if m.shape[-1] == tokens])
        return rows[:batch] if rows.shape[0] >= batch else None

