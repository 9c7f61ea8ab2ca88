"""Cost of patching a real-size SD1.5 UNet with a LoRA in place (random weights, CPU).

A kohya-style rank-32 LoRA on every attention / feed-forward / projection layer (the usual training target) is
matched and applied with ``patched_weights``. Reported: the bytes backed up while patched (only patched
parameters) against the whole UNet, the resident-memory growth while patched, and the time to patch + restore as a
ratio to one UNet forward pass at 64×64 latents measured in the same run.

    PYTHONPATH=. python bench/lora_patch_cost.py [--dtype float16] [--rank 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffusers import UNet2DConditionModel  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402

from nodes.lora import match_lora, patched_weights  # noqa: E402
from nodes.models.families import FAMILIES, read_config  # noqa: E402

TARGET_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def build_unet(dtype: torch.dtype) -> UNet2DConditionModel:
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(read_config(FAMILIES["sd15"].config_dir, "unet"))
    unet.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return unet.to(dtype).eval()


def kohya_lora(unet: torch.nn.Module, rank: int) -> dict[str, torch.Tensor]:
    sd = {}
    for name, module in unet.named_modules():
        if name.endswith(TARGET_SUFFIXES) and hasattr(module, "weight"):
            w = module.weight
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, *w.shape[1:], dtype=torch.float16) * 0.01
            sd[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, *([1] * (w.ndim - 2)),
                                                      dtype=torch.float16) * 0.01
            sd[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    return sd


def forward(unet: torch.nn.Module, dtype: torch.dtype) -> float:
    x = torch.randn(1, 4, 64, 64, dtype=dtype)
    context = torch.randn(1, 77, 768, dtype=dtype)
    start = time.perf_counter()
    with torch.no_grad():
        unet(x, torch.tensor([500]), encoder_hidden_states=context)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    unet = build_unet(dtype)
    lora = kohya_lora(unet, args.rank)
    unet_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    lora_bytes = sum(t.numel() * t.element_size() for t in lora.values())

    start = time.perf_counter()
    match = match_lora(lora, {"unet": unet}, "sd15")
    match_s = time.perf_counter() - start
    patched = [unet.get_submodule(m).weight for m in match.patches["unet"]]
    backup_bytes = sum(p.numel() * p.element_size() for p in patched)

    forward_s = min(forward(unet, dtype) for _ in range(2))
    before = rss_bytes()
    start = time.perf_counter()
    with patched_weights({"unet": unet}, [(match.patches, 0.8)]):
        patch_s = time.perf_counter() - start
        during = rss_bytes()
        start = time.perf_counter()
    restore_s = time.perf_counter() - start

    print(f"UNet {args.dtype}: {unet_bytes / 2**20:.0f} MiB; LoRA rank {args.rank}: {len(lora)} tensors, "
          f"{lora_bytes / 2**20:.1f} MiB, {match.patch_count} modules patched")
    print(f"backed-up parameters while patched: {backup_bytes / 2**20:.0f} MiB "
          f"({100 * backup_bytes / unet_bytes:.0f}% of the UNet); RSS growth while patched: "
          f"{(during - before) / 2**20:.0f} MiB")
    print(f"match: {match_s:.2f} s; patch: {patch_s:.2f} s ({patch_s / forward_s:.2f}x one 64x64 UNet forward of "
          f"{forward_s:.2f} s); restore: {restore_s:.3f} s ({restore_s / forward_s:.3f}x)")


if __name__ == "__main__":
    main()
