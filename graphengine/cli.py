"""The `graphengine` command line: run, validate and list nodes. Exit codes: 0 ok, 1 execution error, 2 bad input."""

from __future__ import annotations

import argparse
import collections.abc
import importlib
import importlib.util
import inspect
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from .admission import LIMITS, AdmissionLimits, add_limit_arguments, admit, limit_overrides
from .context import CancelToken
from .events import Event, EventHub, Executing, Progress
from .executor import Executor
from .memory import MemoryGuard
from .options import add_folder_arguments, add_threads_argument, engine_version, threads_option
from .missing_nodes import MissingNode
from .registry import NodeRegistry
from .runtime import RuntimeConfig, build_registry
from .validation import PromptValidationError, ValidatedPrompt, validate_prompt
from .workflow_io import WorkflowFileError, apply_overrides, is_ui_workflow, load_workflow_data

EXIT_OK, EXIT_EXECUTION, EXIT_INVALID = 0, 1, 2


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _config(args: argparse.Namespace) -> RuntimeConfig:
    try:
        options = {"threads": threads_option(args)} if hasattr(args, "threads") else {}
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return RuntimeConfig(
        base_dir=Path(args.base_dir) if args.base_dir else Path.cwd(),
        output_dir=args.output_dir, input_dir=args.input_dir, models_dir=args.models_dir,
        extra_model_paths=[Path(p) for p in args.extra_model_paths or []],
        custom_nodes_dirs=[Path(p) for p in args.custom_nodes or []],
        options=options,
    )


def to_api_prompt(data: Any, registry: NodeRegistry) -> Any:
    """Turn a UI-format workflow into an API prompt when the converter is installed; API prompts pass through."""
    if not is_ui_workflow(data):
        return data
    if importlib.util.find_spec("graphengine.ui_convert") is None:
        raise UserError("this is a UI-format workflow; UI-format conversion is not available in this build")
    return importlib.import_module("graphengine.ui_convert").convert(data, registry)


def _load(args: argparse.Namespace, registry: NodeRegistry) -> tuple[Any, dict[str, Any]]:
    from .ui_convert import UIConversionError

    try:
        data, extra_pnginfo = load_workflow_data(args.workflow)
        prompt = to_api_prompt(data, registry)
        overrides = getattr(args, "set", None) or []
        prompt = apply_overrides(prompt, overrides)
    except WorkflowFileError as exc:
        raise UserError(str(exc)) from None
    except UIConversionError as exc:
        raise UserError(f"{args.workflow}: {exc}") from None
    check_override_inputs(prompt, overrides, registry)
    return prompt, extra_pnginfo


def check_override_inputs(prompt: dict[str, Any], overrides: list[str], registry: NodeRegistry) -> None:
    """A `--set` naming an input its node does not have is a mistake (a typo), never silently ignored."""
    from .workflow_io import parse_override

    for text in overrides:
        node_id, input_name, _ = parse_override(text)
        schema = registry.get(prompt[node_id].get("class_type"))
        if schema is not None and input_name not in schema.inputs:
            raise UserError(f"--set {text!r}: node {node_id} ({schema.name}) has no input {input_name!r}; "
                            f"its inputs: {', '.join(schema.inputs)}")


def _print_validation_error(err: PromptValidationError) -> None:
    missing = (err.error.get("extra_info") or {}).get("missing_nodes") or []
    if missing:  # every missing node type, one line each with its hint
        print(f"error: {err.error['message']}", file=sys.stderr)
        for m in missing:
            print(f"  {MissingNode(m['node_id'], m['class_type'], m['node_title'], m['hint']).describe()}",
                  file=sys.stderr)
        return
    print(f"error: {err.error['message']}" + (f" ({err.error['details']})" if err.error.get("details")
                                             and not err.node_errors else ""), file=sys.stderr)
    for node_id, entry in err.node_errors.items():
        for e in entry["errors"]:
            print(f"  node {node_id} ({entry['class_type']}): {e['message']}: {e['details']}", file=sys.stderr)


def _limits(registry: NodeRegistry, args: argparse.Namespace) -> AdmissionLimits:
    return AdmissionLimits.for_machine(registry.services, **limit_overrides(args))


def _validate(prompt: Any, registry: NodeRegistry, limits: AdmissionLimits) -> ValidatedPrompt | None:
    """Validate and apply the resource limits (printing the errors; None if invalid or over a limit)."""
    try:
        validated = validate_prompt(prompt, registry)
        admit(validated, registry.services, limits)
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
    if registry.packs:
        print(registry.pack_summary(), file=sys.stderr)
    prompt, extra_pnginfo = _load(args, registry)
    if args.server:
        return submit_to_server(args.server, prompt, extra_pnginfo, args)
    return run_prompt(prompt, extra_pnginfo, registry, config, args)


def submit_to_server(url: str, prompt: Any, extra_pnginfo: dict[str, Any], args: argparse.Namespace) -> int:
    """POST the (converted) prompt to a ComfyUI-compatible server, wait for it, print the images' /view URLs."""
    from urllib.parse import urlencode

    from .script import SubmitError, submit_prompt
    try:
        entry = submit_prompt(url, prompt, extra_data={"extra_pnginfo": extra_pnginfo} if extra_pnginfo else None,
                              timeout=args.timeout)
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_EXECUTION if isinstance(exc.body, dict) and "status" in exc.body else EXIT_INVALID
    except (OSError, TimeoutError) as exc:
        print(f"error: {url}: {exc}", file=sys.stderr)
        return EXIT_EXECUTION
    for ui in (entry.get("outputs") or {}).values():
        for image in ui.get("images", []) if isinstance(ui, dict) else []:
            query = urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
            print(f"{url.rstrip('/')}/view?{query}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"outputs": entry.get("outputs", {})}))
    return EXIT_OK


def run_prompt(prompt: Any, extra_pnginfo: dict[str, Any], registry: NodeRegistry, config: RuntimeConfig,
               args: argparse.Namespace) -> int:
    """Validate and execute an API prompt with progress bars; print the written files (`run` and `template`)."""
    limits = _limits(registry, args)
    validated = _validate(prompt, registry, limits)
    if validated is None:
        return EXIT_INVALID
    hub = EventHub()
    bars = _ProgressBars(validated, args.quiet)
    hub.subscribe(bars)
    cancel = CancelToken()
    with MemoryGuard(limits.memory_budget, cancel):
        result = Executor(registry, events=hub).execute(validated, extra_data={"extra_pnginfo": extra_pnginfo},
                                                        cancel=cancel)
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
        print(path, file=sys.stderr if args.json else sys.stdout)  # --json: standard output is JSON only
    if args.json:
        print(json.dumps({"outputs": result.outputs, "executed": result.executed, "cached": result.cached}))
    return EXIT_OK


def _schemas_registry(args: argparse.Namespace) -> NodeRegistry:
    """The node schemas without the nodes' implementations (no torch): what validate and convert need."""
    config = _config(args)
    config.schemas_only = True
    return build_registry(config)


def cmd_validate(args: argparse.Namespace) -> int:
    registry = _schemas_registry(args)
    prompt, _ = _load(args, registry)
    validated = _validate(prompt, registry, _limits(registry, args))
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


# -- templates and conversion ----------------------------------------------------------------------------------

TEMPLATE_SKIPPED_PARAMS = frozenset({"registry"})
_RUN_OPTIONS = ("json", "quiet", "traceback", "base_dir", "output_dir", "input_dir", "models_dir",
                "extra_model_paths", "custom_nodes", "threads", *(limit.attr for limit in LIMITS))


def _option_kwargs(annotation: Any, default: Any) -> dict[str, Any]:
    """argparse keyword arguments for a template parameter, from its annotation and default."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else str
    origin = typing.get_origin(annotation)
    kwargs: dict[str, Any] = {} if default is inspect.Parameter.empty else {"default": default}
    if origin is typing.Literal:
        choices = list(typing.get_args(annotation))
        return {**kwargs, "choices": choices, "type": type(choices[0])}
    if annotation is bool:
        return {**kwargs, "action": argparse.BooleanOptionalAction}
    if origin in (list, tuple, collections.abc.Sequence):
        item = (typing.get_args(annotation) or (str,))[0]
        return {**kwargs, "nargs": "+", "type": item if item in (int, float, str) else str}
    return {**kwargs, "type": annotation if annotation in (int, float, str) else str}


def _option_help(kwargs: dict[str, Any], required: bool) -> str:
    kind = getattr(kwargs.get("type"), "__name__", "flag")
    if "choices" in kwargs:
        kind = "one of " + ", ".join(map(str, kwargs["choices"]))
    elif kwargs.get("nargs") == "+":
        kind = f"one or more {kind} values"
    if required:
        return f"{kind} (required)"
    return f"{kind} (default: {kwargs.get('default')!r})".replace("%", "%%")


def _summary(template: Any) -> str:
    """The first sentence of a template's docstring."""
    text = " ".join((inspect.getdoc(template) or "").split())
    return text.split(". ")[0].rstrip(".")


def template_parser(name: str, template: Any) -> argparse.ArgumentParser:
    """A parser whose options are the template's parameters (`--filename-prefix` or `--filename_prefix`)."""
    doc = inspect.getdoc(template) or ""
    parser = argparse.ArgumentParser(prog=f"graphengine template {name}", description=doc)
    hints = typing.get_type_hints(template)
    group = parser.add_argument_group("template parameters")
    for param in inspect.signature(template).parameters.values():
        if param.name in TEMPLATE_SKIPPED_PARAMS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name in _RUN_OPTIONS:
            raise UserError(f"template {name}: parameter {param.name!r} clashes with a command-line option")
        flags = dict.fromkeys([f"--{param.name.replace('_', '-')}", f"--{param.name}"])
        kwargs = _option_kwargs(hints.get(param.name, str), param.default)
        required = param.default is inspect.Parameter.empty
        group.add_argument(*flags, dest=param.name, required=required, help=_option_help(kwargs, required),
                           **kwargs)
    parser.add_argument("--json", action="store_true", help="print the API-format graph instead of running it")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--traceback", action="store_true", help="print the node's traceback on failure")
    _common_options(parser)
    add_threads_argument(parser)
    add_limit_arguments(parser)
    return parser


def _template_params(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in _RUN_OPTIONS}


def cmd_template(args: argparse.Namespace) -> int:
    from .script import load_templates

    try:
        templates = load_templates()
    except (ImportError, AttributeError, TypeError) as exc:
        raise UserError(f"cannot load the templates: {type(exc).__name__}: {exc}") from None
    if not args.name:
        if not templates:
            raise UserError("no templates are installed (entry-point group graphengine.templates)")
        for name, template in sorted(templates.items()):
            print(f"{name:18s} {_summary(template)}")
        return EXIT_OK
    template = templates.get(args.name)
    if template is None:
        known = ", ".join(sorted(templates)) or "none installed"
        raise UserError(f"unknown template {args.name!r} (templates: {known})")
    parser = template_parser(args.name, template)
    parsed = parser.parse_args(args.params)
    params = _template_params(parsed)
    config = _config(parsed)
    registry = build_registry(config)
    if "registry" in inspect.signature(template).parameters:
        params["registry"] = registry
    try:
        prompt = template(**params).to_api()
    except (TypeError, ValueError) as exc:
        raise UserError(f"template {args.name}: {exc}") from None
    if parsed.json:
        print(json.dumps(prompt, indent=2))
        return EXIT_OK
    return run_prompt(prompt, {}, registry, config, parsed)


def _is_api_prompt(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and all(isinstance(n, dict) and "class_type" in n
                                                         for n in data.values())


def cmd_convert(args: argparse.Namespace) -> int:
    from .ui_convert import UIConversionError, convert

    try:
        data, _ = load_workflow_data(args.workflow)
    except WorkflowFileError as exc:
        raise UserError(str(exc)) from None
    if is_ui_workflow(data):
        registry = _schemas_registry(args)
        try:
            data = convert(data, registry, controls="apply" if args.apply_controls else "keep", seed=args.seed)
        except UIConversionError as exc:
            raise UserError(f"{args.workflow}: {exc}") from None
    elif not _is_api_prompt(data):
        raise UserError(f"{args.workflow}: neither a UI-format workflow nor an API-format prompt")
    text = json.dumps(data, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _common_options(p: argparse.ArgumentParser) -> None:
    add_folder_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphengine", description="Run ComfyUI-format node graphs.")
    parser.add_argument("--version", action="version", version=f"graphengine {engine_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = _common_options

    run = sub.add_parser("run", help="run a workflow (API JSON, UI JSON or a PNG saved by SaveImage)")
    run.add_argument("workflow")
    run.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--json", action="store_true", help="also print the UI outputs as JSON")
    run.add_argument("--traceback", action="store_true", help="print the node's traceback on failure")
    run.add_argument("--server", metavar="URL", help="queue it on a ComfyUI-compatible server instead of running here")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server (with --server)")
    common(run)
    add_threads_argument(run)
    add_limit_arguments(run)
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a workflow without running it")
    val.add_argument("workflow")
    val.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE")
    common(val)
    add_limit_arguments(val)
    val.set_defaults(func=cmd_validate)

    nodes = sub.add_parser("nodes", help="list the registered node types")
    nodes.add_argument("--json", action="store_true", help="print /object_info JSON")
    common(nodes)
    nodes.set_defaults(func=cmd_nodes)

    template = sub.add_parser("template", help="build a graph from a template and run it (or print it with --json)",
                              add_help=False)
    template.add_argument("name", nargs="?", help="template name (leave out to list the templates)")
    template.add_argument("params", nargs=argparse.REMAINDER,
                          help="the template's parameters as --name value; NAME --help lists them")
    template.set_defaults(func=cmd_template)

    convert = sub.add_parser("convert", help="convert a UI-format workflow (JSON or PNG) to an API-format prompt")
    convert.add_argument("workflow")
    convert.add_argument("-o", "--output", help="write here instead of standard output")
    convert.add_argument("--apply-controls", action="store_true",
                         help="apply each seed's increment/decrement/randomize setting, as the editor does on queue")
    convert.add_argument("--seed", type=int, help="random seed for --apply-controls")
    common(convert)
    convert.set_defaults(func=cmd_convert)

    # `serve` hands its whole argument list to the server's own parser (the one `python server.py` uses), so
    # the two take the same flags and `graphengine serve --help` lists them; see main().
    serve = sub.add_parser("serve", help="start the ComfyUI-compatible server (same flags as server.py; "
                           "serve --help lists them)", add_help=False)
    serve.add_argument("server_args", nargs=argparse.REMAINDER)
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser("doctor", help="show the folders, devices, threads, extras and custom node packs in use")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    common(doctor)
    add_threads_argument(doctor)
    doctor.set_defaults(func=cmd_doctor)
    return parser


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import format_report, gather_report

    report = gather_report(_config(args))
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["serve"]:
            return cmd_serve(argparse.Namespace(server_args=argv[1:]))
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()
        return code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_EXECUTION
    except BrokenPipeError:
        # The reader went away (`graphengine … --json | head`): stop quietly; point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_EXECUTION


if __name__ == "__main__":
    sys.exit(main())
