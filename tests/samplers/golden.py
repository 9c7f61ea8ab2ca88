"""Loading ComfyUI golden data (tests/data/golden) and replaying its runs through `ksample`.

Shared with the stochastic-sampler tests.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from nodes.samplers.pipeline import ksample
from tests.samplers.toy import ToyModel, constant_conditioning

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"


@functools.cache
def manifest() -> dict:
    return json.loads((GOLDEN_DIR / "manifest.json").read_text())


@functools.cache
def model_calls() -> dict:
    return json.loads((GOLDEN_DIR / "model_calls.json").read_text())


@functools.cache
def tensors(name: str) -> dict[str, torch.Tensor]:
    """A golden safetensors file by stem, e.g. tensors("runs_main")."""
    return load_file(str(GOLDEN_DIR / f"{name}.safetensors"))


def all_run_entries() -> dict[str, dict]:
    """Every KSampler/KSamplerAdvanced run of the manifest (main + special), by run key."""
    runs = manifest()["runs"]
    return {**runs["main"], **runs["special"]}


def reference_output(entry: dict) -> torch.Tensor:
    return tensors(Path(entry["output_file"]).stem)[entry["output_key"]]


def within_tolerance(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> tuple[bool, float, float]:
    """Golden README §8: max|a - b| <= rel * max(1, max|ref|); returns (ok, error, bound)."""
    bound = rel * max(1.0, float(expected.abs().max()))
    error = float((actual - expected).abs().max())
    return actual.shape == expected.shape and error <= bound, error, bound


def _latent_for(entry: dict) -> dict:
    description = entry["latent"]
    inputs = tensors("inputs")
    if description.startswith("output of "):
        previous = all_run_entries()[description[len("output of "):]]
        return {"samples": reference_output(previous).clone()}
    base = description.split(" ")[0]
    kind, shape = base.split("_")
    if kind == "zeros":
        samples = torch.zeros([int(v) for v in shape.split("x")])
    else:
        samples = inputs[f"latent/{base}"].clone()
    latent = {"samples": samples}
    if "batch_index [3,5]" in description:
        latent["batch_index"] = [3, 5]
    if "noise_mask mask8" in description:
        latent["noise_mask"] = inputs["mask/mask8"].clone()
    if "noise_mask mask64" in description:
        latent["noise_mask"] = inputs["mask/mask64"].clone()
    return latent


def model_for(entry: dict, calls: list | None = None) -> ToyModel:
    return ToyModel(prediction="v" if entry["model"] == "sd20v" else "eps", calls=calls)


def replay(entry: dict, callback=None, calls: list | None = None) -> dict:
    """Run one manifest entry through `ksample` with the toy network."""
    dim = 1024 if entry["model"] == "sd20v" else 768
    common = dict(
        seed=entry["seed"],
        steps=entry["steps"],
        cfg=entry["cfg"],
        sampler_name=entry["sampler_name"],
        scheduler=entry["scheduler"],
        positive=constant_conditioning(0.3, dim),
        negative=constant_conditioning(-0.2, dim),
        latent=_latent_for(entry),
        callback=callback,
    )
    model = model_for(entry, calls)
    if entry["node"] == "KSamplerAdvanced":
        return ksample(
            model,
            disable_noise=entry["add_noise"] == "disable",
            start_step=entry["start_at_step"],
            last_step=entry["end_at_step"],
            force_full_denoise=entry["return_with_leftover_noise"] != "enable",
            **common,
        )
    return ksample(model, denoise=entry["denoise"], **common)
