"""Command-line options shared by `graphengine run/validate/…` and `python server.py` / `graphengine serve`:
one builder per option group, so the two entry points cannot drift apart."""

from __future__ import annotations

import argparse
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "graphengine-sd"  # pyproject.toml's name; the import package is graphengine


def engine_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def add_folder_arguments(p: argparse.ArgumentParser, *, server: bool = False) -> None:
    """Where the engine keeps its files, and the extra model paths and custom node folders it reads."""
    group = p.add_argument_group("folders")
    group.add_argument("--base-dir", type=Path,
                       help="folder holding output/, input/, models/ (default: current folder)")
    group.add_argument("--output-dir", type=Path)
    group.add_argument("--input-dir", type=Path)
    if server:
        group.add_argument("--temp-dir", type=Path)
        group.add_argument("--user-dir", type=Path)
    group.add_argument("--models-dir", type=Path, help="the models folder (default: <base-dir>/models)")
    group.add_argument("--extra-model-paths", action="append", metavar="YAML", type=Path,
                       help="an extra_model_paths.yaml adding model search folders (repeatable)")
    group.add_argument("--custom-nodes", action="append", metavar="DIR", type=Path,
                       help="a folder of custom node packs (repeatable)")


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"CPU threads for the math (default: {default_threads()} on this machine; "
                        "OMP_NUM_THREADS wins when set)")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Half the cores this process may use (one per physical core on SMT machines), at most 8.

    More threads than physical cores, or threads fighting other processes for a small machine, make the small
    matrix products of a CPU run many times slower (see bench/threads.py)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(8, available_cores() // 2))


def threads_option(args: argparse.Namespace) -> int:
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    return threads or default_threads()
