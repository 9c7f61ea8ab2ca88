"""The in-process Python API for scripts and notebooks: run a graph here and get PIL images and latents back.

    from nodes.api import Engine

    pipe = Engine()                                    # the models/ folder of the current directory
    out = pipe("a red circle on the left on a blue background", num_inference_steps=20, guidance_scale=5.0,
               seed=0)
    out.images[0]                                      # a PIL.Image.Image
    out.latents[0].shape                               # torch.Size([1, 4, 8, 8]): what the image was decoded from

Any graph runs the same way: `pipe.run(graph)` takes a `graphengine.script.Graph` (build one with `pipe.graph()`)
or an API-format prompt dict. The engine keeps its result cache between runs, so a second run reuses the loaded
models and every unchanged node."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from graphengine import (ExecutionResult, Executor, Link, NodeRegistry, RuntimeConfig, build_registry,
                         validate_prompt)
from graphengine.script import Graph

from .imageio import to_uint8


class GraphRunError(RuntimeError):
    """A node failed (or the run was interrupted); carries the engine's result with ComfyUI's error payload."""

    def __init__(self, result: ExecutionResult) -> None:
        err = result.error or {}
        super().__init__(f"{err.get('node_type')} (node {err.get('node_id')}) failed: "
                         f"{err.get('exception_type')}: {err.get('exception_message')}" if err else result.status)
        self.result = result


@dataclass
class GraphOutput:
    """What one run produced: the images its output nodes received, the latents they were decoded from."""

    images: list[Image.Image] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)  # [B, C, h, w] each, in VAE units
    result: ExecutionResult | None = None  # the engine's result: UI outputs (file names), events, values

    def value(self, node_id: str, slot: int = 0) -> Any:
        """A node's output value (the first of a list-mapped node's calls)."""
        assert self.result is not None
        return self.result.values[node_id][slot][0]


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """An IMAGE tensor [B, H, W, C] in 0..1 as PIL images, rounded as SaveImage writes them."""
    return [Image.fromarray(to_uint8(image)) for image in images]


class Engine:
    """A registry and an executor for this process, over one models folder (ComfyUI's layout)."""

    def __init__(self, base_dir: str | Path | None = None, *, models_dir: str | Path | None = None,
                 output_dir: str | Path | None = None, threads: int | None = None,
                 registry: NodeRegistry | None = None) -> None:
        config = RuntimeConfig(base_dir=Path(base_dir) if base_dir else Path.cwd(),
                               models_dir=Path(models_dir) if models_dir else None,
                               output_dir=Path(output_dir) if output_dir else None,
                               options={"threads": threads} if threads else {})
        self.registry = registry if registry is not None else build_registry(config)
        self.executor = Executor(self.registry)

    def graph(self) -> Graph:
        return Graph(self.registry)

    def run(self, graph: Graph | dict[str, Any]) -> GraphOutput:
        """Execute; raises PromptValidationError for an invalid graph and GraphRunError when a node fails."""
        prompt = graph.to_api() if isinstance(graph, Graph) else graph
        validated = validate_prompt(prompt, self.registry)
        result = self.executor.execute(validated, keep_values=True)
        if not result.ok:
            raise GraphRunError(result)
        out = GraphOutput(result=result)
        for output_id in validated.outputs:
            for link in _links(validated.nodes[output_id], "IMAGE"):
                for images in result.values.get(link.node_id, [[]])[link.slot]:
                    out.images += to_pil(images)
                source = validated.nodes[link.node_id]
                for latent_link in _links(source, "LATENT"):
                    latents = result.values[latent_link.node_id][latent_link.slot]
                    out.latents += [latent["samples"] for latent in latents]
        return out

    def txt2img(self, prompt: str, negative_prompt: str = "", *, num_inference_steps: int = 20,
                guidance_scale: float = 5.0, width: int = 64, height: int = 64, seed: int = 0,
                num_images_per_prompt: int = 1, sampler: str = "euler", scheduler: str = "normal",
                checkpoint: str = "graphengine-demo.safetensors") -> GraphOutput:
        """Text to image with diffusers' parameter names (the workflows' txt2img template)."""
        from workflows.templates import txt2img

        return self.run(txt2img(prompt, negative=negative_prompt, width=width, height=height,
                                steps=num_inference_steps, cfg=guidance_scale, sampler=sampler, scheduler=scheduler,
                                seed=seed, batch_size=num_images_per_prompt, checkpoint=checkpoint,
                                registry=self.registry))

    __call__ = txt2img


def _links(call: Any, socket_type: str) -> list[Any]:
    """The links into a node's inputs of one socket type."""
    return [value for name, value in call.inputs.items()
            if isinstance(value, Link) and call.schema.inputs[name].spec.type == socket_type]
