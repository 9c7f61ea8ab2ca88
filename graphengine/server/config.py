"""Settings of one server instance (an object passed to `create_app`, never module state)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import DEFAULT_MAX_ENTRIES
from ..runtime import RuntimeConfig

PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")
DEFAULT_MAX_PROMPT_ATTEMPTS = 2  # a prompt running when the process died is retried once, then failed
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    base_dir: Path = field(default_factory=Path.cwd)
    output_dir: Path | None = None
    input_dir: Path | None = None
    temp_dir: Path | None = None
    user_dir: Path | None = None
    models_dir: Path | None = None
    listen: str = "127.0.0.1"
    port: int = 8188
    auth_token: str | None = None
    preview_method: str = "auto"
    max_upload_size_mb: float = 100.0
    database: Path | str | None = None  # default: <user_dir>/queue.sqlite3; ":memory:" keeps nothing
    max_history: int = 10000
    allowed_hosts: tuple[str, ...] = ()  # extra Host names accepted besides loopback (e.g. behind a proxy)
    ws_queue_limit: int = 512  # frames pending per websocket past which state frames merge and previews drop
    ws_send_timeout: float = 20.0  # a websocket that reads nothing for this long is cut off
    preview_size: int = 512
    max_prompt_attempts: int = DEFAULT_MAX_PROMPT_ATTEMPTS
    cache_entries: int = DEFAULT_MAX_ENTRIES  # node results the result cache keeps at most (ComfyUI's --cache-lru)
    extra_model_paths: list[Path] = field(default_factory=list)  # extra_model_paths.yaml files
    custom_nodes_dirs: list[Path] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # passed to RuntimeConfig.options
    limits: dict = field(default_factory=dict)  # AdmissionLimits fields over the machine's defaults (0: no limit)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        runtime = self.runtime_config()
        self.output_dir, self.input_dir, self.temp_dir = runtime.output_dir, runtime.input_dir, runtime.temp_dir
        self.user_dir, self.models_dir = runtime.user_dir, runtime.models_dir
        if not self.listen_hosts:
            raise ValueError(f"--listen needs at least one address, got {self.listen!r}")
        if self.cache_entries < 1:
            raise ValueError(f"cache_entries must be at least 1, got {self.cache_entries}")
        if self.max_prompt_attempts < 1:
            raise ValueError(f"max_prompt_attempts must be at least 1, got {self.max_prompt_attempts}")
        if self.preview_method not in PREVIEW_METHODS:
            raise ValueError(f"preview_method must be one of {PREVIEW_METHODS}, got {self.preview_method!r}")
        if self.database is None:
            self.database = Path(self.user_dir) / "queue.sqlite3"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_size_mb * 1024 * 1024)

    @property
    def listen_hosts(self) -> list[str]:
        return [h.strip() for h in self.listen.split(",") if h.strip()]

    @property
    def loopback_only(self) -> bool:
        return all(is_loopback(h) for h in self.listen_hosts)

    def runtime_config(self) -> RuntimeConfig:
        options = {"preview_method": self.preview_method, **self.options}
        return RuntimeConfig(base_dir=self.base_dir, output_dir=self.output_dir, input_dir=self.input_dir,
                             temp_dir=self.temp_dir, user_dir=self.user_dir, models_dir=self.models_dir,
                             extra_model_paths=[Path(p) for p in self.extra_model_paths],
                             custom_nodes_dirs=[Path(p) for p in self.custom_nodes_dirs], options=options)
