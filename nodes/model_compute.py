"""ModelComputeDtype and TorchCompileModel: how the UNet's forward runs, kept as data on the MODEL handle
(`UNetModel.compute`) and applied only where the handle calls its UNet (`UNetModel.apply_model`), so the cached
module is never changed for other handles.

Compute dtype: fp16 / bf16 run the forward under `torch.autocast` (matrix products, convolutions and attention in
that dtype; normalisations stay in the stored dtype), fp32 on a model stored in half precision casts the live module
to fp32 for the call and back (exact: every half value is a float32 value). torch.compile wraps the live module
lazily at the first sampling call; torch's own compiled-code cache makes later calls and steps reuse the compiled
graphs (a module patch or a new input shape recompiles)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

import torch

from graphengine import Combo, Node, Output

from .types import Model

DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_BACKENDS = ("inductor", "cudagraphs")


@dataclass(frozen=True)
class Compute:
    """How a MODEL's UNet runs: `dtype` (None = as stored) and a torch.compile `backend` (None = not compiled)."""

    dtype: torch.dtype | None = None
    backend: str | None = None

    @contextlib.contextmanager
    def running(self, unet: torch.nn.Module) -> Iterator[Callable]:
        """The callable that runs `unet` this way, for the block."""
        param = next(unet.parameters())
        forward = unet if self.backend is None else compiled(unet, self.backend, param.device)
        if self.dtype is None or self.dtype == param.dtype:
            yield forward
        elif self.dtype == torch.float32:
            stored = param.dtype
            torch.nn.Module.to(unet, torch.float32)  # diffusers' own `to` warns about casts
            try:
                yield forward
            finally:
                torch.nn.Module.to(unet, stored)
        else:
            with torch.autocast(param.device.type, dtype=self.dtype):
                yield forward


def compile_unavailable(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot compile for `device` here, or None."""
    if backend == "cudagraphs" and device.type != "cuda":
        return f"backend 'cudagraphs' records CUDA graphs and the model runs on {device.type}, not on a CUDA device"
    if backend == "inductor" and device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "backend 'inductor' needs the triton package for CUDA kernels, which is not installed"
    if backend == "inductor" and device.type == "cpu":
        compilers = [os.environ.get("CXX"), "g++", "clang++"]
        if not any(name and shutil.which(name) for name in compilers):
            return "backend 'inductor' needs a C++ compiler (g++ or clang++, or $CXX) on a CPU, and none is on PATH"
    return None


def compiled(unet: torch.nn.Module, backend: str, device: torch.device) -> Callable:
    """`unet` wrapped by torch.compile (the work happens at its first call)."""
    reason = compile_unavailable(backend, device)
    if reason is not None:
        raise RuntimeError(f"TorchCompileModel: {reason}; remove the node to run uncompiled")
    return torch.compile(unet, backend=backend)


def _model(value, node: str):
    if value is None:
        raise ValueError(f"{node}: the MODEL input is empty (the checkpoint has no diffusion model)")
    return value


class ModelComputeDtype(Node):
    """Runs the diffusion model in another dtype (default: as loaded)."""

    CATEGORY = "advanced/debug/model"
    RETURNS = (Output("MODEL"),)

    model: Model
    dtype: Annotated[str, Combo(list(DTYPES))]

    def execute(self, ctx) -> tuple:
        model = _model(self.model, "ModelComputeDtype")
        return (model.with_compute(dtype=DTYPES[self.dtype]),)


class TorchCompileModel(Node):
    """Compiles the diffusion model with torch.compile when it first samples."""

    CATEGORY = "_for_testing"
    EXPERIMENTAL = True
    RETURNS = (Output("MODEL"),)

    model: Model
    backend: Annotated[str, Combo(list(COMPILE_BACKENDS), advanced=True)]

    def execute(self, ctx) -> tuple:
        return (_model(self.model, "TorchCompileModel").with_compute(backend=self.backend),)


NODE_CLASSES = [ModelComputeDtype, TorchCompileModel]
