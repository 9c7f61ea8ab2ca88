"""`comfy.model_management`: devices and dtypes of the engine's model manager, and the engine's interrupt."""

from __future__ import annotations

import sys
import types
from typing import Any

import torch

from graphengine import Interrupted, current_context

from ..handles import free_device_cache
from . import active_services, make_module


class InterruptProcessingException(Interrupted):
    """Raised where a pack checks for an interrupted prompt; the engine treats it as its own interrupt."""


def interrupt_current_processing(value: bool = True) -> None:
    """Interrupt the running prompt (the node's own, or the server's current one); False cannot un-cancel."""
    if not value:
        return
    ctx = current_context()
    if ctx is not None:
        ctx.cancel.cancel()
        return
    server = getattr(sys.modules.get("server"), "PromptServer", None)
    instance = getattr(server, "instance", None)
    if instance is not None:
        instance.interrupt()


def processing_interrupted() -> bool:
    ctx = current_context()
    return ctx is not None and ctx.cancel.cancelled


def throw_exception_if_processing_interrupted() -> None:
    if processing_interrupted():
        raise InterruptProcessingException("Prompt was interrupted")


def soft_empty_cache(force: bool = False) -> None:
    free_device_cache()


def load_models_gpu(models: Any, memory_required: int = 0, force_patch_weights: bool = False,
                    minimum_memory_required: Any = None, force_full_load: bool = False) -> None:
    """No-op: the engine's model manager moves models to the compute device when a node uses them."""


def load_model_gpu(model: Any) -> None:
    """No-op, like `load_models_gpu`."""


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    """Free bytes on `dev` (CUDA: free device memory plus torch's reserved-but-unused; CPU: available RAM)."""
    device = torch.device(dev) if dev is not None else _device()
    if device.type == "cuda":
        free_cuda, _ = torch.cuda.mem_get_info(device)
        free_torch = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        total = free_cuda + free_torch
    else:
        import psutil
        total = free_torch = psutil.virtual_memory().available
    return (total, free_torch) if torch_free_too else total


def get_total_memory(dev: Any = None, torch_total_too: bool = False) -> Any:
    device = torch.device(dev) if dev is not None else _device()
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch_total = torch.cuda.memory_reserved(device)
    else:
        import psutil
        total = torch_total = psutil.virtual_memory().total
    return (total, torch_total) if torch_total_too else total


def _device(bound: Any = None) -> torch.device:
    return active_services(bound).manager.device


def build(bound: Any) -> types.ModuleType:
    def get_torch_device() -> torch.device:
        return _device(bound)

    def unet_dtype(device: Any = None, model_params: int = 0, supported_dtypes: Any = None) -> torch.dtype:
        return active_services(bound).manager.dtype

    def vae_dtype(device: Any = None, allowed_dtypes: Any = None) -> torch.dtype:
        return active_services(bound).manager.vae_dtype

    def cpu() -> torch.device:
        return torch.device("cpu")

    def offload_device() -> torch.device:
        return active_services(bound).manager.offload_device

    return make_module("comfy.model_management", __doc__, {
        "get_torch_device": get_torch_device, "text_encoder_device": get_torch_device,
        "vae_device": get_torch_device, "unet_inital_load_device": lambda *a, **k: offload_device(),
        "intermediate_device": cpu, "unet_offload_device": offload_device,
        "text_encoder_offload_device": offload_device, "vae_offload_device": offload_device,
        "unet_dtype": unet_dtype, "vae_dtype": vae_dtype,
        "get_autocast_device": lambda dev: getattr(dev, "type", "cuda"),
        "is_device_cpu": lambda dev: torch.device(dev).type == "cpu",
        "is_device_cuda": lambda dev: torch.device(dev).type == "cuda",
        "xformers_enabled": lambda: False, "xformers_enabled_vae": lambda: False,
        "InterruptProcessingException": InterruptProcessingException,
        "interrupt_current_processing": interrupt_current_processing,
        "processing_interrupted": processing_interrupted,
        "throw_exception_if_processing_interrupted": throw_exception_if_processing_interrupted,
        "soft_empty_cache": soft_empty_cache, "load_models_gpu": load_models_gpu, "load_model_gpu": load_model_gpu,
        "get_free_memory": get_free_memory, "get_total_memory": get_total_memory,
        "OOM_EXCEPTION": torch.cuda.OutOfMemoryError,
    })
