"""Random-weight LoRA files in the real key layouts, with hand-merged references written out independently.

Module names are spelled out per layout (LDM paths as kohya's SDXL trainer and ComfyUI's LoraSave write them,
diffusers paths as kohya's SD1 trainer and PEFT write them), each paired with the live diffusers module it must
patch; the references use plain matmul / kron / permute formulas, not the package's delta functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# (LDM path, diffusers path) in the tiny models of tests/models/tiny.py (SD1: lpb 2, 4 levels; SDXL: 3 levels).
SD15_NAMES = {
    "proj_in": ("input_blocks.1.1.proj_in", "down_blocks.0.attentions.0.proj_in"),
    "attn1_q": ("input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    "attn1_out": ("input_blocks.1.1.transformer_blocks.0.attn1.to_out.0",
                  "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    "ff": ("input_blocks.4.1.transformer_blocks.0.ff.net.0.proj",
           "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj"),
    "mid_k": ("middle_block.1.transformer_blocks.0.attn2.to_k", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"),
    "conv1": ("input_blocks.1.0.in_layers.2", "down_blocks.0.resnets.0.conv1"),
    "conv1_b1": ("input_blocks.4.0.in_layers.2", "down_blocks.1.resnets.0.conv1"),
    "out_conv2": ("output_blocks.3.0.out_layers.3", "up_blocks.1.resnets.0.conv2"),
    "proj_out": ("output_blocks.3.1.proj_out", "up_blocks.1.attentions.0.proj_out"),
    "upsampler": ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),
    "downsampler": ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
    "skip": ("output_blocks.8.0.skip_connection", "up_blocks.2.resnets.2.conv_shortcut"),
    "time": ("time_embed.0", "time_embedding.linear_1"),
    "norm": ("input_blocks.1.1.norm", "down_blocks.0.attentions.0.norm"),
}
SDXL_NAMES = {
    "deep_k": ("input_blocks.7.1.transformer_blocks.1.attn2.to_k",
               "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k"),
    "label": ("label_emb.0.0", "add_embedding.linear_1"),
    "upsampler": ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"),
    "skip": ("output_blocks.8.0.skip_connection", "up_blocks.2.resnets.2.conv_shortcut"),
    "proj_out": ("output_blocks.3.1.proj_out", "up_blocks.1.attentions.0.proj_out"),
    "mid_k": ("middle_block.1.transformer_blocks.0.attn2.to_k", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"),
}
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"  # transformers path; live CLIPTextModel may be flattened
TE_FC1 = "text_model.encoder.layers.1.mlp.fc1"


def live_clip_name(model: torch.nn.Module, path: str) -> str:
    names = {n for n, _ in model.named_modules()}
    return path if path in names else path.removeprefix("text_model.")


@dataclass
class Expected:
    """What a file must do: (slot, live module, "weight"|"bias") -> ΔW at strength 1."""

    deltas: dict[tuple[str, str, str], torch.Tensor] = field(default_factory=dict)


class Writer:
    """Builds one file's state dict and the matching expected deltas against live modules."""

    def __init__(self, targets: dict[str, torch.nn.Module], seed: int = 0, dtype=torch.float32):
        self.targets, self.sd, self.expected = targets, {}, Expected()
        self.g = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def rand(self, *shape) -> torch.Tensor:
        return (torch.randn(shape, generator=self.g) * 0.1).to(self.dtype)

    def weight(self, slot: str, module: str, param: str = "weight") -> torch.Tensor:
        return getattr(self.targets[slot].get_submodule(module), param)

    def _expect(self, slot, module, delta, param="weight"):
        w = self.weight(slot, module, param)
        self.expected.deltas[(slot, module, param)] = delta.reshape(w.shape).float()

    def lora(self, key: str, slot: str, module: str, rank: int = 4, alpha: float | None = 2.0, style: str = "kohya",
             mid: bool = False):
        w = self.weight(slot, module)
        out, inp = w.shape[0], w.shape[1]
        kernel = tuple(w.shape[2:])
        if mid:  # LoCon Tucker: 1x1 down, kxk core, 1x1 up
            down, core, up = self.rand(rank, inp, 1, 1), self.rand(rank, rank, *kernel), self.rand(out, rank, 1, 1)
            per_tap = up.float().flatten(1) @ core.float().permute(2, 3, 0, 1) @ down.float().flatten(1)
            delta = per_tap.permute(2, 3, 0, 1)
            self.sd[f"{key}.lora_mid.weight"] = core
        else:
            down = self.rand(rank, inp, *kernel)
            up = self.rand(out, rank, *((1, 1) if kernel else ()))
            delta = torch.einsum("or,rikl->oikl", up.float().reshape(out, rank), down.float().reshape(rank, inp, *(
                kernel or (1, 1))))
        names = {"kohya": ("lora_up.weight", "lora_down.weight"), "peft": ("lora_B.weight", "lora_A.weight"),
                 "bare": ("up.weight", "down.weight")}[style]
        self.sd[f"{key}.{names[0]}"], self.sd[f"{key}.{names[1]}"] = up, down
        if alpha is not None:
            self.sd[f"{key}.alpha"] = torch.tensor(float(alpha))
        self._expect(slot, module, delta * ((alpha / rank) if alpha is not None else 1.0))

    def loha(self, key: str, slot: str, module: str, rank: int = 4, alpha: float = 3.0, tucker: bool = False):
        w = self.weight(slot, module)
        out, inp, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
        if tucker:
            factors = []
            for i in (1, 2):
                t, wa, wb = self.rand(rank, rank, *kernel), self.rand(rank, out), self.rand(rank, inp)
                self.sd.update({f"{key}.hada_t{i}": t, f"{key}.hada_w{i}_a": wa, f"{key}.hada_w{i}_b": wb})
                factors.append((wa.float().T @ t.float().permute(2, 3, 0, 1) @ wb.float()).permute(2, 3, 0, 1))
        else:
            cols = w[0].numel()
            factors = []
            for i in (1, 2):
                wa, wb = self.rand(out, rank), self.rand(rank, cols)
                self.sd.update({f"{key}.hada_w{i}_a": wa, f"{key}.hada_w{i}_b": wb})
                factors.append(wa.float() @ wb.float())
        self.sd[f"{key}.alpha"] = torch.tensor(alpha)
        self._expect(slot, module, factors[0].reshape(w.shape) * factors[1].reshape(w.shape) * (alpha / rank))

    def lokr(self, key: str, slot: str, module: str, split: tuple[int, int], rank: int = 2, alpha: float = 1.0,
             w1_decomposed: bool = False, w2_decomposed: bool = True, tucker: bool = False):
        """``split``: (a, b) with weight [a*c, b*d(, kh, kw)]; w1 is [a, b], w2 [c, d(, kh, kw)]."""
        w = self.weight(slot, module)
        a, b = split
        c, d, kernel = w.shape[0] // a, w.shape[1] // b, tuple(w.shape[2:])
        scale = 1.0
        if w1_decomposed:
            w1a, w1b = self.rand(a, rank), self.rand(rank, b)
            self.sd.update({f"{key}.lokr_w1_a": w1a, f"{key}.lokr_w1_b": w1b})
            w1, scale = w1a.float() @ w1b.float(), alpha / rank
        else:
            w1 = self.rand(a, b)
            self.sd[f"{key}.lokr_w1"] = w1
        if tucker:
            t2, w2a, w2b = self.rand(rank, rank, *kernel), self.rand(rank, c), self.rand(rank, d)
            self.sd.update({f"{key}.lokr_t2": t2, f"{key}.lokr_w2_a": w2a, f"{key}.lokr_w2_b": w2b})
            w2 = (w2a.float().T @ t2.float().permute(2, 3, 0, 1) @ w2b.float()).permute(2, 3, 0, 1)
            scale = alpha / rank
        elif w2_decomposed:
            w2a, w2b = self.rand(c, rank), self.rand(rank, d * max(1, torch.Size(kernel).numel()))
            self.sd.update({f"{key}.lokr_w2_a": w2a, f"{key}.lokr_w2_b": w2b})
            w2, scale = (w2a.float() @ w2b.float()).reshape(c, d, *kernel), alpha / rank
        else:
            w2 = self.rand(c, d, *kernel)
            self.sd[f"{key}.lokr_w2"] = w2
        self.sd[f"{key}.alpha"] = torch.tensor(alpha)
        w1 = w1.float().reshape(a, b, *([1] * len(kernel)))
        self._expect(slot, module, torch.kron(w1, w2.float().contiguous()) * scale)

    def diff(self, key: str, slot: str, module: str, bias: bool = True, weight: bool = True):
        if weight:
            dw = self.rand(*self.weight(slot, module).shape)
            self.sd[f"{key}.diff"] = dw
            self._expect(slot, module, dw.float())
        if bias:
            db = self.rand(*self.weight(slot, module, "bias").shape)
            self.sd[f"{key}.diff_b"] = db
            self._expect(slot, module, db.float(), "bias")


def underscored(prefix: str, path: str) -> str:
    return prefix + path.replace(".", "_")
