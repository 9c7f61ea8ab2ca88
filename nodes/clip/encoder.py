"""Running one transformers CLIP text encoder over token windows, the way ComfyUI does.

- Layer choice: `layer_idx=None` (or |idx| > number of layers) is the last layer after the final layer norm;
  otherwise `hidden_states[idx]` (-1 = last layer, -2 = penultimate, …), passed through the final layer norm only
  for encoders configured so (SD1/SD2: yes; SDXL's CLIP-L and OpenCLIP-G: no).
- Pooled output: the final-layer-normed last layer at the first end token, through `text_projection` when the
  encoder has one and the role asks for it.
- Weights: when any slot weight differs from 1, the empty prompt is encoded too and every weighted row becomes
  `(z - z_empty) * w + z_empty` against the empty prompt's row at the same position.
- Long prompts run through the encoder WINDOWS_PER_CALL windows at a time, with progress(i, n) before each call
  (a prompt of up to WINDOWS_PER_CALL - 1 windows, plus the empty prompt, is still one call).
- Embedding vectors replace the output of the token-embedding layer at their slots (position embeddings are still
  added by the model). A vector whose width does not match the encoder is dropped with a warning and a pad token is
  appended at the end of its window, as ComfyUI does.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..work import Progress, row_chunks, run_units
from .tokenize import TokenizerSpec, Window, empty_window

log = logging.getLogger(__name__)

PLACEHOLDER_ID = 0  # token id fed where an embedding vector goes; its embedding row is overwritten
WINDOWS_PER_CALL = 32


@dataclass(frozen=True)
class EncoderRole:
    """How one text encoder of a model family is tokenized and read out."""

    name: str              # "l", "g" or "h" (ComfyUI's token dict keys)
    embedding_key: str     # key in SDXL-style embedding files ("clip_l", "clip_g", "clip_h")
    pad_with_end: bool     # SD1 CLIP-L pads with the end token, OpenCLIP with id 0
    default_layer: int | None
    norm_hidden: bool      # apply the final layer norm to a chosen hidden layer
    projected_pooled: bool


@dataclass(frozen=True)
class Injection:
    row: int
    position: int
    vector: torch.Tensor


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def final_layer_norm(module: torch.nn.Module) -> torch.nn.Module:
    """The text model's final layer norm (CLIPTextModel holds it directly, the projection variant in text_model)."""
    return getattr(module, "text_model", module).final_layer_norm


def num_layers(module: torch.nn.Module) -> int:
    return int(module.config.num_hidden_layers)


def hidden_size(module: torch.nn.Module) -> int:
    return int(module.config.hidden_size)


def _window_ids(window: Window, row: int, spec: TokenizerSpec, width: int) -> tuple[list[int], list[Injection]]:
    ids: list[int] = []
    injections: list[Injection] = []
    dropped = 0
    for token, _ in window:
        if isinstance(token, torch.Tensor):
            if token.shape[-1] != width:
                log.warning("shape mismatch when applying an embedding (%d != %d), embedding ignored",
                            token.shape[-1], width)
                dropped += 1
                continue
            injections.append(Injection(row, len(ids), token))
            ids.append(PLACEHOLDER_ID)
        else:
            ids.append(int(token))
    return ids + [spec.pad_id] * dropped, injections


@contextmanager
def _injected(module: torch.nn.Module, injections: list[Injection]):
    if not injections:
        yield
        return

    def replace_rows(_layer, _inputs, output):
        output = output.clone()
        for item in injections:
            output[item.row, item.position] = item.vector.to(device=output.device, dtype=output.dtype)
        return output

    handle = module.get_input_embeddings().register_forward_hook(replace_rows)
    try:
        yield
    finally:
        handle.remove()


def select_layer(module: torch.nn.Module, outputs, layer_idx: int | None, norm_hidden: bool) -> torch.Tensor:
    count = num_layers(module)
    if layer_idx is None or abs(layer_idx) > count:
        return outputs.last_hidden_state
    index = layer_idx if layer_idx < 0 else layer_idx + 1  # hidden_states[0] is the embedding output
    hidden = outputs.hidden_states[index]
    return final_layer_norm(module)(hidden) if norm_hidden else hidden


def _pooled(module: torch.nn.Module, outputs, ids: torch.Tensor, end_id: int, projected: bool) -> torch.Tensor:
    first_end = (ids == end_id).int().argmax(dim=-1)
    pooled = outputs.last_hidden_state[torch.arange(ids.shape[0], device=ids.device), first_end]
    projection = getattr(module, "text_projection", None)
    return projection(pooled) if projected and projection is not None else pooled


def run_encoder(module, rows: list[Window], spec: TokenizerSpec, role: EncoderRole,
                layer_idx: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [B, T, D] (float32) and pooled outputs [B, P] of full windows, on the module's device."""
    device = _module_device(module)
    width = hidden_size(module)
    id_rows, injections = [], []
    for row, window in enumerate(rows):
        ids, found = _window_ids(window, row, spec, width)
        id_rows.append(ids)
        injections.extend(found)
    ids = torch.tensor(id_rows, dtype=torch.long, device=device)
    needs_hidden = layer_idx is not None and abs(layer_idx) <= num_layers(module)
    with torch.no_grad(), _injected(module, injections):
        outputs = module(input_ids=ids, output_hidden_states=needs_hidden)
        z = select_layer(module, outputs, layer_idx, role.norm_hidden)
        pooled = _pooled(module, outputs, ids, spec.end_id, role.projected_pooled)
    return z.float(), pooled.float()


def apply_weights(z: torch.Tensor, z_empty: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ComfyUI's emphasis: rows with weight w != 1 become (z - z_empty) * w + z_empty."""
    w = weights.to(z.dtype).unsqueeze(-1)
    weighted = (z - z_empty) * w + z_empty
    return torch.where(w != 1.0, weighted, z)


def encode_windows(module, windows: list[Window], spec: TokenizerSpec, role: EncoderRole, layer_idx: int | None,
                   manager=None, progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning [1, 77*k, D] and the first window's pooled output [1, P], both float32 on CPU."""
    weights = torch.tensor([[w for _, w in window] for window in windows], dtype=torch.float32)
    has_weights = bool((weights != 1.0).any())
    rows = list(windows)
    if has_weights:
        rows.append([(token, 1.0) for token in empty_window(spec, weights.shape[1])])
    with manager.use(module) if manager is not None else nullcontext(module) as active:
        # A manager may hand back the module it placed on the device; otherwise it moved `module` itself.
        running = active if isinstance(active, torch.nn.Module) else module

        def encode(chunk: slice) -> tuple[torch.Tensor, torch.Tensor]:
            z, pooled = run_encoder(running, rows[chunk], spec, role, layer_idx)
            return z.cpu(), pooled.cpu()

        outputs = run_units(row_chunks(len(rows), WINDOWS_PER_CALL), encode, progress)
    z = outputs[0][0] if len(outputs) == 1 else torch.cat([o[0] for o in outputs])
    pooled = outputs[0][1]
    sections = z[: len(windows)]
    if has_weights:
        sections = apply_weights(sections, z[-1:], weights)
    return sections.reshape(1, -1, sections.shape[-1]), pooled[:1]
