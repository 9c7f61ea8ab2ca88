"""ComfyUI-compatible HTTP + websocket server over the graphengine executor, with a persistent queue."""

from .app import create_app
from .cli import main
from .config import ServerConfig

__all__ = ["ServerConfig", "create_app", "main"]
