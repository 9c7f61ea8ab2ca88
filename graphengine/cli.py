"""The `graphengine` command line: run, validate and list nodes. Exit codes: 0 ok, 1 execution error, 2 bad input."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from .events import Event, EventHub, Executing, Progress
from .executor import Executor
from .registry import NodeRegistry
from .runtime import RuntimeConfig, build_registry
from .validation import PromptValidationError, ValidatedPrompt, validate_prompt
from .workflow_io import WorkflowFileError, apply_overrides, is_ui_workflow, load_workflow_data

EXIT_OK, EXIT_EXECUTION, EXIT_INVALID = 0, 1, 2


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _config(args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(
        base_dir=Path(args.base_dir) if args.base_dir else Path.cwd(),
        output_dir=args.output_dir, input_dir=args.input_dir, models_dir=args.models_dir,
        extra_model_paths=[Path(p) for p in args.extra_model_paths or []],
        custom_nodes_dirs=[Path(p) for p in args.custom_nodes or []],
    )


def to_api_prompt(data: Any, registry: NodeRegistry) -> Any:
    """Turn a UI-format workflow into an API prompt when the converter is installed; API prompts pass through."""
    if not is_ui_workflow(data):
        return data
    if importlib.util.find_spec("graphengine.ui_convert") is None:
        raise UserError("this is a UI-format workflow; UI-format conversion is not available in this build")
    return importlib.import_module("graphengine.ui_convert").convert(data, registry)


def _load(args: argparse.Namespace, registry: NodeRegistry) -> tuple[Any, dict[str, Any]]:
    try:
        data, extra_pnginfo = load_workflow_data(args.workflow)
        prompt = to_api_prompt(data, registry)
        return apply_overrides(prompt, getattr(args, "set", None) or []), extra_pnginfo
    except WorkflowFileError as exc:
        raise UserError(str(exc)) from None


def _print_validation_error(err: PromptValidationError) -> None:
    print(f"error: {err.error['message']}" + (f" ({err.error['details']})" if err.error.get("details")
                                             and not err.node_errors else ""), file=sys.stderr)
    for node_id, entry in err.node_errors.items():
        for e in entry["errors"]:
            print(f"  node {node_id} ({entry['class_type']}): {e['message']}: {e['details']}", file=sys.stderr)


def _validate(prompt: Any, registry: NodeRegistry) -> ValidatedPrompt | None:
    try:
        validated = validate_prompt(prompt, registry)
    except PromptValidationError as err:
        _print_validation_error(err)
        return None
    for node_id, entry in validated.node_errors.items():
        for e in entry["errors"]:
            print(f"warning: node {node_id} ({entry['class_type']}) skipped: {e['message']}: {e['details']}",
                  file=sys.stderr)
    return validated


class _ProgressBars:
    """One tqdm bar per node that reports progress."""

    def __init__(self, prompt: ValidatedPrompt, quiet: bool) -> None:
        self.prompt = prompt
        self.quiet = quiet
        self.bars: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if isinstance(event, Progress) and event.node is not None:
            from tqdm import tqdm
            bar = self.bars.get(event.node)
            if bar is None or bar.total != event.max:
                if bar is not None:
                    bar.close()
                call = self.prompt.nodes.get(event.node)
                label = f"{call.class_type} {event.node}" if call else event.node
                bar = self.bars[event.node] = tqdm(total=event.max, desc=label, leave=True, file=sys.stderr)
            bar.update(event.value - bar.n)
        elif isinstance(event, Executing) and event.node is None:
            self.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def output_files(outputs: dict[str, dict[str, Any]], config: RuntimeConfig) -> list[Path]:
    roots = {"output": config.output_dir, "temp": config.temp_dir, "input": config.input_dir}
    files = []
    for ui in outputs.values():
        for item in ui.get("images", []) if isinstance(ui, dict) else []:
            if isinstance(item, dict) and "filename" in item:
                root = Path(roots.get(item.get("type", "output"), config.output_dir))
                files.append(root / item.get("subfolder", "") / item["filename"])
    return files


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    registry = build_registry(config)
    prompt, extra_pnginfo = _load(args, registry)
    validated = _validate(prompt, registry)
    if validated is None:
        return EXIT_INVALID
    hub = EventHub()
    bars = _ProgressBars(validated, args.quiet)
    hub.subscribe(bars)
    result = Executor(registry, events=hub).execute(validated, extra_data={"extra_pnginfo": extra_pnginfo})
    bars.close()
    if result.status == "interrupted":
        print("interrupted", file=sys.stderr)
        return EXIT_EXECUTION
    if not result.ok:
        err = result.error or {}
        print(f"error: {err.get('node_type')} (node {err.get('node_id')}) failed: "
              f"{err.get('exception_type')}: {err.get('exception_message')}", file=sys.stderr)
        if args.traceback:
            print("".join(err.get("traceback", [])), file=sys.stderr)
        return EXIT_EXECUTION
    for path in output_files(result.outputs, config):
        print(path)
    if args.json:
        print(json.dumps({"outputs": result.outputs, "executed": result.executed, "cached": result.cached}))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    registry = build_registry(_config(args))
    prompt, _ = _load(args, registry)
    validated = _validate(prompt, registry)
    if validated is None:
        return EXIT_INVALID
    print(f"ok: {len(validated.nodes)} nodes, outputs {', '.join(validated.outputs)}")
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    registry = build_registry(_config(args))
    if args.json:
        print(json.dumps(registry.object_info(), indent=1))
        return EXIT_OK
    for name in sorted(registry.names()):
        schema = registry.schema(name)
        inputs = ", ".join(f"{n}:{i.spec.type}" for n, i in schema.inputs.items())
        outputs = ", ".join(o.type for o in schema.outputs) or "-"
        print(f"{name:32s} [{schema.category}] ({inputs}) -> {outputs}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("graphengine.server") is None:
        raise UserError("the server is not available in this build")
    return importlib.import_module("graphengine.server").main(args.server_args) or EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphengine", description="Run ComfyUI-format node graphs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base-dir", help="folder holding output/, input/, models/ (default: current folder)")
        p.add_argument("--output-dir")
        p.add_argument("--input-dir")
        p.add_argument("--models-dir")
        p.add_argument("--extra-model-paths", action="append", metavar="YAML")
        p.add_argument("--custom-nodes", action="append", metavar="DIR", help="a folder of custom node packs")

    run = sub.add_parser("run", help="run a workflow (API JSON, UI JSON or a PNG saved by SaveImage)")
    run.add_argument("workflow")
    run.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--json", action="store_true", help="also print the UI outputs as JSON")
    run.add_argument("--traceback", action="store_true", help="print the node's traceback on failure")
    common(run)
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a workflow without running it")
    val.add_argument("workflow")
    val.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE")
    common(val)
    val.set_defaults(func=cmd_validate)

    nodes = sub.add_parser("nodes", help="list the registered node types")
    nodes.add_argument("--json", action="store_true", help="print /object_info JSON")
    common(nodes)
    nodes.set_defaults(func=cmd_nodes)

    serve = sub.add_parser("serve", help="start the ComfyUI-compatible server (same flags as server.py)")
    serve.add_argument("server_args", nargs=argparse.REMAINDER)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_EXECUTION


if __name__ == "__main__":
    sys.exit(main())
