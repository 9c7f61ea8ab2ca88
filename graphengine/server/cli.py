"""`python server.py …` / `graphengine serve …`: parse options, build the app, serve until interrupted."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from ..admission import add_limit_arguments, limit_overrides
from ..cache import DEFAULT_MAX_ENTRIES
from ..options import add_folder_arguments, add_threads_argument, engine_version, threads_option
from .app import create_app
from .config import DEFAULT_MAX_PROMPT_ATTEMPTS, PREVIEW_METHODS, ServerConfig
from .security import RedactingAccessLogger, TokenRedactingFilter
from .state import STATE


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphengine serve", description="ComfyUI-compatible graphengine server "
                                "(`python server.py` takes the same flags)")
    p.add_argument("--version", action="version", version=f"graphengine {engine_version()}")
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1",
                   help="address(es) to bind, comma separated (bare --listen: 0.0.0.0; needs --auth-token)")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--database", help="SQLite file of the queue and history (default <user-dir>/queue.sqlite3)")
    p.add_argument("--auth-token", help="require this token (Authorization: Bearer … or ?token=…)")
    p.add_argument("--preview-method", choices=PREVIEW_METHODS, default="auto",
                   help="live previews while sampling (default auto: TAESD from models/vae_approx/ when one fits, "
                        "else latent2rgb; sent to the editor only)")
    p.add_argument("--max-upload-size", type=float, default=100.0, help="in MB")
    p.add_argument("--max-history", type=int, default=10000)
    p.add_argument("--max-prompt-attempts", type=int, default=DEFAULT_MAX_PROMPT_ATTEMPTS,
                   help="starts a prompt gets if the server dies while running it; then it is failed (default 2)")
    p.add_argument("--cache-lru", type=int, default=DEFAULT_MAX_ENTRIES, metavar="N",
                   help="node results the result cache keeps at most, besides its byte budget (default 10000)")
    p.add_argument("--allowed-host", action="append", default=[], help="extra Host name to accept (repeatable)")
    p.add_argument("--log-level", default="INFO")
    add_threads_argument(p)
    add_folder_arguments(p, server=True)
    add_limit_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(base_dir=args.base_dir or Path.cwd(), output_dir=args.output_dir, input_dir=args.input_dir,
                        temp_dir=args.temp_dir, user_dir=args.user_dir, models_dir=args.models_dir,
                        listen=args.listen, port=args.port, auth_token=args.auth_token,
                        preview_method=args.preview_method, max_upload_size_mb=args.max_upload_size,
                        database=args.database, max_history=args.max_history,
                        allowed_hosts=tuple(args.allowed_host), limits=limit_overrides(args),
                        max_prompt_attempts=args.max_prompt_attempts, cache_entries=args.cache_lru,
                        extra_model_paths=list(args.extra_model_paths or []),
                        custom_nodes_dirs=list(args.custom_nodes or []),
                        options={"threads": threads_option(args)})


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(TokenRedactingFilter())
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"graphengine serve: error: {exc}", file=sys.stderr)
        return 2
    if not config.loopback_only and not config.auth_token:
        print(f"refusing to listen on {config.listen} without --auth-token", file=sys.stderr)
        return 2
    app = create_app(config)
    registry = app[STATE].registry
    if registry.packs:
        print(registry.pack_summary(), file=sys.stderr, flush=True)
    for failed in registry.pack_errors:
        logging.getLogger("graphengine.server").warning("custom node pack %s failed to load: %s", failed.path,
                                                        failed.message)
    hosts = config.listen_hosts
    urls = ", ".join(f"http://{_url_host(h)}:{config.port}/" for h in hosts)
    print(f"graphengine {engine_version()} serving on {urls}", flush=True)
    web.run_app(app, host=hosts if len(hosts) > 1 else hosts[0], port=config.port, print=None,
                handle_signals=True, access_log_class=RedactingAccessLogger)
    return 0


def _url_host(host: str) -> str:
    """The address to click: a wildcard bind is reached through loopback; IPv6 goes in brackets."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
