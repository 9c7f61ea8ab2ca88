"""Services the Stable Diffusion nodes share during a run: folders, the model manager, preview settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from graphengine import RuntimeConfig


@dataclass
class Services:
    """Built once per registry from the runtime config; passed to every node through its context."""

    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    preview_method: str = "none"

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def input_dir(self) -> Path:
        return Path(self.config.input_dir)

    @property
    def temp_dir(self) -> Path:
        return Path(self.config.temp_dir)

    @cached_property
    def folders(self) -> Any:
        from .models.folders import ModelFolders
        return ModelFolders.from_config(self.config)

    @cached_property
    def manager(self) -> Any:
        from .models.manager import ModelManager
        return ModelManager(**self.config.options.get("model_manager", {}))
