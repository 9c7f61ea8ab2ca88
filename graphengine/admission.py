"""Admission control: what a validated prompt will cost, checked against limits before it is queued.

Nodes state their cost with `Node.estimate` (output bytes, transient peak bytes, work units, named quantities such
as text length, and an "extent" per output — a dict of shape hints downstream estimates read). `admit` walks the
prompt in topological order, sums, and raises `AdmissionError` (ComfyUI's 400 body) naming the node, the limit,
the value and the flag that raises it. The engine knows no node pack: quantity names are plain strings."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, fields
from typing import Any

from .memory import GIB, format_bytes, physical_memory
from .validation import Link, PromptValidationError, ValidatedPrompt, error_dict

log = logging.getLogger("graphengine.admission")

ERROR_TYPE = "resource_limit_exceeded"
MEMORY_FRACTION = 0.75  # default memory budget: this share of the machine's RAM
VRAM_FRACTION = 0.9


@dataclass
class Estimate:
    """One node's cost. `extents[i]` describes output i (None: unknown) for the nodes that consume it."""

    output_bytes: int = 0  # held by the node's outputs until the prompt ends
    peak_bytes: int = 0  # transient, while the node runs
    work: float = 0  # work units (pixel-steps), summed over the prompt
    quantities: dict[str, float] = field(default_factory=dict)  # per-node quantities with a cap, e.g. batch_pixels
    extents: tuple[dict[str, Any] | None, ...] = ()


@dataclass(frozen=True)
class Limit:
    attr: str  # AdmissionLimits attribute
    quantity: str  # the name nodes report (or "work" / "memory" / "vram" for the prompt-wide limits)
    flag: str
    what: str
    unit: str = ""


LIMITS = (
    Limit("max_text_length", "text_length", "--max-text-length", "characters in one text input"),
    Limit("max_batch_pixels", "batch_pixels", "--max-batch-pixels",
          "pixels of one image or latent batch a node makes (batch × height × width)"),
    Limit("max_step_pixels", "step_pixels", "--max-step-pixels", "one sampler's steps × batch × height × width"),
    Limit("max_prompt_work", "work", "--max-prompt-work", "pixel-steps of all samplers in one prompt"),
    Limit("memory_budget", "memory", "--memory-budget", "process memory, estimated and watched at run time", "GB"),
    Limit("vram_budget", "vram", "--vram-budget", "GPU memory one node may need at its peak", "GB"),
)
_BY_QUANTITY = {limit.quantity: limit for limit in LIMITS}


@dataclass(frozen=True)
class AdmissionLimits:
    """Caps on one prompt; 0 or None disables a cap. `for_machine` derives the memory budgets."""

    max_text_length: int = 20_000
    max_batch_pixels: int = 16_000_000
    max_step_pixels: int = 1_000_000_000
    max_prompt_work: int = 4_000_000_000
    memory_budget: int | None = None  # bytes
    vram_budget: int | None = None  # bytes

    @classmethod
    def for_machine(cls, services: Any = None, **overrides: Any) -> AdmissionLimits:
        """Defaults with memory budgets from this machine (RAM; VRAM from `services.vram_bytes()` when present)."""
        ram = physical_memory()
        vram_hook = getattr(services, "vram_bytes", None)
        try:
            vram = vram_hook() if callable(vram_hook) else 0
        except Exception:  # noqa: BLE001 - no GPU information: no VRAM cap
            vram = 0
        derived = {"memory_budget": int(ram * MEMORY_FRACTION) if ram else None,
                   "vram_budget": int(vram * VRAM_FRACTION) if vram else None}
        derived.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**derived)

    def cap(self, quantity: str) -> tuple[Limit, float] | None:
        limit = _BY_QUANTITY.get(quantity)
        value = getattr(self, limit.attr) if limit else None
        return (limit, value) if value else None


class AdmissionError(PromptValidationError):
    """The prompt would exceed a resource limit; `body()` is ComfyUI's 400 body."""


@dataclass
class PromptEstimate:
    nodes: dict[str, Estimate]
    memory_bytes: int
    work: float


def _text_length(constants: dict[str, Any]) -> int:
    return max((len(v) for v in constants.values() if isinstance(v, str)), default=0)


def _pass_through(call: Any, upstream: dict[str, Any]) -> Estimate:
    """No estimate hook: each output takes the extent of the first linked input of its type (a copy's bytes)."""
    extents = []
    for output in call.schema.outputs:
        source = next((upstream.get(name) for name, link in call.links().items()
                       if call.schema.inputs[name].spec.type == output.type), None)
        extents.append(source)
    held = sum(int(e.get("bytes", 0)) for e in extents if e)
    return Estimate(output_bytes=held, extents=tuple(extents))


def estimate_node(call: Any, extents: dict[tuple[str, int], Any], services: Any) -> Estimate:
    constants = {k: v for k, v in call.inputs.items() if not isinstance(v, Link)}
    upstream = {k: extents.get((v.node_id, v.slot)) for k, v in call.inputs.items() if isinstance(v, Link)}
    estimate = None
    if call.schema.has_estimate:
        try:
            estimate = call.schema.cls.estimate(constants, upstream, services)
        except Exception:  # noqa: BLE001 - a broken hook costs its estimate, never the request
            log.warning("estimate of %s (node %s) failed", call.class_type, call.node_id, exc_info=True)
    if estimate is None:
        estimate = _pass_through(call, upstream)
    text = _text_length(constants)
    if text > estimate.quantities.get("text_length", 0):
        estimate.quantities["text_length"] = text
    return estimate


def estimate_prompt(prompt: ValidatedPrompt, services: Any = None) -> PromptEstimate:
    """Every node's estimate, the prompt's memory (all outputs held + the largest peak) and its total work."""
    extents: dict[tuple[str, int], Any] = {}
    nodes: dict[str, Estimate] = {}
    for node_id, call in prompt.nodes.items():
        estimate = nodes[node_id] = estimate_node(call, extents, services)
        for slot, extent in enumerate(estimate.extents):
            extents[(node_id, slot)] = extent
    held = sum(e.output_bytes for e in nodes.values())
    peak = max((e.peak_bytes for e in nodes.values()), default=0)
    return PromptEstimate(nodes, held + peak, sum(e.work for e in nodes.values()))


def _show(limit: Limit, value: float) -> str:
    return format_bytes(value) if limit.unit == "GB" else f"{value:,.0f}"


def _limit_error(limit: Limit, value: float, maximum: float, node_id: str, class_type: str) -> dict[str, Any]:
    details = (f"{class_type} (node {node_id}): {limit.quantity} {_show(limit, value)} exceeds the limit "
               f"{_show(limit, maximum)} ({limit.what}; the server's {limit.flag} raises it)")
    return error_dict(ERROR_TYPE, f"Prompt exceeds the {limit.attr} limit", details, limit=limit.attr,
                      quantity=limit.quantity, value=value, maximum=maximum, flag=limit.flag, node_id=node_id,
                      class_type=class_type)


def _dependent_outputs(prompt: ValidatedPrompt, node_id: str) -> list[str]:
    dependents, changed = {node_id}, True
    while changed:
        changed = False
        for nid, call in prompt.nodes.items():
            if nid not in dependents and any(link.node_id in dependents for link in call.links().values()):
                dependents.add(nid)
                changed = True
    return [o for o in prompt.outputs if o in dependents]


def admit(prompt: ValidatedPrompt, services: Any, limits: AdmissionLimits) -> PromptEstimate:
    """Check a validated prompt against `limits`; raises AdmissionError naming each offending node."""
    estimate = estimate_prompt(prompt, services)
    errors: dict[str, list[dict[str, Any]]] = {}

    def refuse(node_id: str, limit: Limit, value: float, maximum: float) -> None:
        errors.setdefault(node_id, []).append(
            _limit_error(limit, value, maximum, node_id, prompt.nodes[node_id].class_type))

    for node_id, node in estimate.nodes.items():
        for quantity, value in node.quantities.items():
            cap = limits.cap(quantity)
            if cap is not None and value > cap[1]:
                refuse(node_id, cap[0], value, cap[1])
        vram = limits.cap("vram")
        if vram is not None and node.peak_bytes > vram[1]:
            refuse(node_id, vram[0], node.peak_bytes, vram[1])
    if estimate.nodes:
        costliest = max(estimate.nodes, key=lambda n: estimate.nodes[n].work)
        work = limits.cap("work")
        if work is not None and estimate.work > work[1]:
            refuse(costliest, work[0], estimate.work, work[1])
        largest = max(estimate.nodes, key=lambda n: estimate.nodes[n].output_bytes + estimate.nodes[n].peak_bytes)
        memory = limits.cap("memory")
        if memory is not None and estimate.memory_bytes > memory[1]:
            refuse(largest, memory[0], estimate.memory_bytes, memory[1])
    if errors:
        node_errors = {nid: {"errors": errs, "dependent_outputs": _dependent_outputs(prompt, nid),
                             "class_type": prompt.nodes[nid].class_type} for nid, errs in errors.items()}
        details = "\n".join(e["details"] for errs in errors.values() for e in errs)
        raise AdmissionError(error_dict(ERROR_TYPE, "Prompt exceeds the server's resource limits", details),
                             node_errors)
    return estimate


# -- command-line flags (shared by `graphengine run` and the server) ------------------------------------------------

_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_count(text: str) -> int:
    """'16M', '1.5G', '20000' → an integer (decimal suffixes k, M, G, T)."""
    raw = text.strip().lower().replace("_", "")
    scale = _SUFFIXES.get(raw[-1:], 1)
    number = raw[:-1] if scale != 1 else raw
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be ≥ 0: {text!r}")
    return int(value)


def _parse_gigabytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of GB: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be ≥ 0: {text!r}")
    return int(value * GIB)


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The admission flags (0 disables a limit)."""
    group = parser.add_argument_group(
        "resource limits", "A prompt over a limit is refused before it runs. N takes k/M/G suffixes "
        "(16M = 16,000,000); GB is 2^30 bytes; 0 disables a limit.")
    defaults = AdmissionLimits()
    for limit in LIMITS:
        default = getattr(defaults, limit.attr)
        shown = (f"{MEMORY_FRACTION:.0%} of RAM" if limit.attr == "memory_budget" else
                 f"{VRAM_FRACTION:.0%} of the GPU's memory" if limit.attr == "vram_budget" else f"{default:,}")
        group.add_argument(limit.flag, dest=limit.attr, metavar=limit.unit or "N",
                           type=_parse_gigabytes if limit.unit == "GB" else parse_count,
                           help=f"{limit.what} (default {shown})".replace("%", "%%"))


def limit_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The limits given on the command line (AdmissionLimits field → value)."""
    values = {f.name: getattr(args, f.name, None) for f in fields(AdmissionLimits)}
    return {k: v for k, v in values.items() if v is not None}
