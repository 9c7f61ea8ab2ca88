"""spandrel for the tests, and tiny random-weight upscale model files in the real ESRGAN key layout.

`import spandrel` imports torchvision, for two architectures only (LaMa and RestoreFormer import three names from
`torchvision.transforms.functional` at module level). On a CPU-only torch 2.13, the torchvision wheel that pip
finds is built against CUDA torch and fails to import, so where torchvision cannot be imported these tests import
the real spandrel with stand-ins for exactly those three names; the stand-ins raise if called (no test runs LaMa
or RestoreFormer) and are taken out of sys.modules right after the import, so nothing else can see them. The
ESRGAN detection, construction and inference exercised here are spandrel's own code. The production code never
does this: without an importable spandrel the loader node fails and says what to install.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

STANDIN_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
# The RealESRGAN / BasicSR RRDBNet layout hard-codes 32 growth channels; the feature width and depth are free.
GROWTH_CHANNELS = 32


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("torchvision is not importable here (test stand-in)")


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _standins() -> dict[str, types.ModuleType]:
    package, transforms, functional = (types.ModuleType(name) for name in STANDIN_MODULES)
    functional.InterpolationMode, functional.rotate, functional.normalize = _InterpolationMode, _unavailable, \
        _unavailable
    package.transforms, transforms.functional = transforms, functional
    return dict(zip(STANDIN_MODULES, (package, transforms, functional)))


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a CUDA-linked torchvision on CPU torch raises RuntimeError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_spandrel():
    """The real spandrel module (see the module docstring), or None when it is not installed."""
    if "spandrel" in sys.modules and sys.modules["spandrel"] is not None:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("spandrel") is None:
        return None
    if _torchvision_imports():
        import spandrel
        return spandrel
    sys.modules.update(_standins())
    try:
        import spandrel
    finally:
        for name in STANDIN_MODULES:
            sys.modules.pop(name, None)
    return spandrel


def require_spandrel():
    """spandrel, or skip; in CI (where .ci/run installs it) a missing spandrel fails instead."""
    spandrel = import_spandrel()
    if spandrel is None:
        if os.environ.get("CI"):
            pytest.fail("spandrel is not installed; .ci/run installs it")
        pytest.skip("spandrel is not installed (pip install \"graphengine[upscale]\")")
    return spandrel


def esrgan_state_dict(scale: int = 4, features: int = 8, blocks: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in RealESRGAN's RRDBNet key layout (conv_first, body.N.rdbM.convK, conv_body, conv_up1/2,
    conv_hr, conv_last); scale 2 and 1 take pixel-unshuffled input (12 or 48 input channels), as RealESRGAN x2."""
    unshuffle = {4: 1, 2: 2, 1: 4}[scale]
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def conv(name: str, out_channels: int, in_channels: int) -> None:
        std = (0.5 / (in_channels * 9)) ** 0.5  # small enough that the residual blocks do not blow up
        tensors[f"{name}.weight"] = torch.randn(out_channels, in_channels, 3, 3, generator=generator) * std
        tensors[f"{name}.bias"] = torch.randn(out_channels, generator=generator) * 0.01

    conv("conv_first", features, 3 * unshuffle * unshuffle)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                out_channels = features if index == 5 else GROWTH_CHANNELS
                conv(f"body.{block}.rdb{rdb}.conv{index}", out_channels, features + (index - 1) * GROWTH_CHANNELS)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, features, features)
    conv("conv_last", 3, features)
    return tensors


def write_esrgan(path: Path, scale: int = 4, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = esrgan_state_dict(scale, seed=seed)
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:  # BasicSR's .pth layout: the weights under "params_ema"
        torch.save({"params_ema": tensors}, str(path))
    return path
