"""Services the Stable Diffusion nodes share during a run: folders, the model manager, preview settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from graphengine import RuntimeConfig


@dataclass(frozen=True)
class ModelFiles:
    """Combo options: the model files of one folder kind (`Combo(ModelFiles("checkpoints"))`); `describe` says
    where they were looked for, which the validator adds to a "not in list" error."""

    folder: str

    def __call__(self, services: Any) -> list[str]:
        return services.folders.list(self.folder)

    def describe(self, services: Any) -> str:
        paths = ", ".join(str(p) for p in services.folders.paths(self.folder)) or "no folder configured"
        return f"{self.folder} files are looked for in {paths}"


@dataclass
class Services:
    """Built once per registry from the runtime config; passed to every node through its context."""

    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    preview_method: str = "auto"

    @cached_property
    def taesd(self) -> Any:
        """TAESD preview decoders loaded so far (nodes.taesd)."""
        from .taesd import TaesdDecoders
        return TaesdDecoders()

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def input_dir(self) -> Path:
        return Path(self.config.input_dir)

    @property
    def temp_dir(self) -> Path:
        return Path(self.config.temp_dir)

    def preview_images(self, images: Any) -> list[dict[str, str]]:
        """Save images as previews in the temp folder; the UI entries (custom node packs' `ui.PreviewImage`)."""
        from .image import save_previews
        return save_previews(images, self.temp_dir)

    @cached_property
    def folders(self) -> Any:
        from .models.folders import ModelFolders
        return ModelFolders(self.config.models_dir, extra_config_files=self.config.extra_model_paths)

    @cached_property
    def manager(self) -> Any:
        from .models.manager import ModelManager
        return ModelManager(**self.config.options.get("model_manager", {}))

    @staticmethod
    def result_sizeof(value: Any) -> int:
        """The result cache's measure of a cached value (the executor picks it up when it builds its cache)."""
        from .memory import result_sizeof
        return result_sizeof(value)

    def warm_up(self) -> None:
        """Import the model machinery (diffusers, transformers) and scan the model folders, so that the server's
        first prompt does not (the server runs this in a thread at start-up)."""
        import importlib

        for module in ("models", "clip", "samplers.pipeline"):
            importlib.import_module(f"{__package__}.{module}")
        self.folders.list("checkpoints")
        self.manager  # noqa: B018 - built now rather than inside the first prompt

    def unload_models(self) -> None:
        """The server's `/free {unload_models: true}`."""
        if "manager" in self.__dict__:
            self.manager.free()

    def vram_bytes(self) -> int:
        """Memory of the GPU the nodes run on (0 without CUDA); admission control derives its VRAM budget from it.
        0 with described nodes (RuntimeConfig.schemas_only): they estimate no memory, and torch stays unloaded."""
        if self.config.schemas_only:
            return 0
        import torch
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory \
            if torch.cuda.is_available() else 0

    def doctor_info(self) -> dict[str, Any]:
        """What `graphengine doctor` reports for this node pack: model search folders, devices, threads, dtypes."""
        import torch

        manager = self.manager
        return {
            "model_folders": {name: [str(p) for p in self.folders.paths(name)]
                              for name in ("checkpoints", "vae", "loras", "text_encoders", "diffusion_models",
                                           "embeddings", "depth")},
            "devices": [f"{d['type']}: {d['name']}" for d in self.device_stats()],
            "compute_device": str(manager.device),
            "dtype": str(manager.dtype).removeprefix("torch."),
            "vae_dtype": str(manager.vae_dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "torch": torch.__version__,
        }

    def device_stats(self) -> list[dict[str, Any]]:
        """Devices for `/system_stats`, in ComfyUI's shape."""
        import torch
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return [{"name": torch.cuda.get_device_name(), "type": "cuda", "index": torch.cuda.current_device(),
                     "vram_total": total, "vram_free": free, "torch_vram_total": torch.cuda.memory_reserved(),
                     "torch_vram_free": torch.cuda.memory_reserved() - torch.cuda.memory_allocated()}]
        return [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0,
                 "torch_vram_total": 0, "torch_vram_free": 0}]
