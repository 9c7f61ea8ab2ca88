"""ComfyUI's .latent files: safetensors holding `latent_tensor` [B, C, h, w] and an empty `latent_format_version_0`
marker (files without it are from before SD's 0.18215 scaling was stored and get unscaled on load), with the prompt
and workflow as metadata. SaveLatent writes `<prefix>_<counter:05>_.latent` under the output folder; LoadLatent
reads `*.latent` from the input folder. Names never leave their folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch

from graphengine import Combo, Estimate, Node, NodeOutput, Output, String

from .image import file_sha256
from .imageio import check_relative_name, folder_for, resolve_inside, split_annotation
from .model_saving import HIDDEN, file_metadata, output_file
from .option_sources import LATENT_SUFFIX, latent_files
from .types import Latent

SUFFIX = LATENT_SUFFIX
TENSOR_KEY = "latent_tensor"
VERSION_KEY = "latent_format_version_0"
LEGACY_SCALE = 0.18215  # SD1's latent scale factor, applied inside files written before the version marker


def latent_path(services: Any, name: Any) -> Path:
    """The contained path of a LoadLatent name (`x.latent`, `sub/x.latent`, `x.latent [output]`)."""
    plain, kind = split_annotation(check_relative_name(name, "latent name"))
    return resolve_inside(folder_for(services, kind or "input"), plain, "latent name")


def write_latent(path: Path, samples: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write a .latent file; never overwrites (raises FileExistsError)."""
    from safetensors.torch import save

    tensors = {TENSOR_KEY: samples.detach().to("cpu").contiguous(), VERSION_KEY: torch.tensor([])}
    data = save(tensors, metadata={str(k): str(v) for k, v in metadata.items()})
    with open(path, "xb") as handle:
        handle.write(data)


def read_latent(path: Path) -> torch.Tensor:
    """The samples of a .latent file as float32 (legacy files unscaled by 1 / 0.18215)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: not a readable .latent (safetensors) file: {exc}") from exc
    if TENSOR_KEY not in tensors:
        raise ValueError(f"{path.name}: no '{TENSOR_KEY}' tensor in this file")
    scale = 1.0 if VERSION_KEY in tensors else 1.0 / LEGACY_SCALE
    return tensors[TENSOR_KEY].float() * scale


class SaveLatent(Node):
    """Save latents as a .latent file in the output folder."""

    CATEGORY = "_for_testing"
    OUTPUT_NODE = True
    RETURNS = ()
    HIDDEN = HIDDEN
    samples: Latent
    filename_prefix: Annotated[str, String()] = "latents/ComfyUI"

    def execute(self, ctx) -> NodeOutput:
        samples = self.samples.get("samples") if isinstance(self.samples, dict) else None
        if not isinstance(samples, torch.Tensor):
            raise ValueError("samples: expected a LATENT (a dict with a 'samples' tensor)")
        path, _, _ = output_file(ctx, self.filename_prefix, SUFFIX)
        write_latent(path, samples, file_metadata(ctx))
        subfolder = path.parent.relative_to(Path(ctx.services.output_dir)).as_posix()
        entry = {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
        return NodeOutput((), ui={"latents": [entry]})


class LoadLatent(Node):
    """Load latents from a .latent file in the input folder."""

    CATEGORY = "_for_testing"
    RETURNS = (Output("LATENT"),)
    CUSTOM_VALIDATED = frozenset({"latent"})
    latent: Annotated[str, Combo(latent_files)]

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], services: Any = None) -> bool | str:
        name = inputs.get("latent")
        try:
            path = latent_path(services, name) if services is not None else check_relative_name(name)
        except ValueError as exc:
            return f"Invalid latent file: {exc}"
        if services is not None and not Path(path).is_file():
            return f"Invalid latent file: {name}"
        return True

    @classmethod
    def estimate(cls, inputs, upstream, services=None):
        """About the file's size in memory (stat only)."""
        try:
            size = latent_path(services, inputs.get("latent")).stat().st_size
        except (ValueError, OSError, TypeError, AttributeError):
            return None
        return Estimate(output_bytes=size, extents=(None,))

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], services: Any = None) -> Any:
        try:
            return file_sha256(latent_path(services, inputs.get("latent")))
        except (ValueError, OSError, TypeError, AttributeError):
            return float("nan")

    def execute(self, ctx) -> tuple:
        path = latent_path(ctx.services, self.latent)
        if not path.is_file():
            raise FileNotFoundError(f"Latent file not found: {self.latent!r}")
        return ({"samples": read_latent(path)},)


NODE_CLASSES = [SaveLatent, LoadLatent]
