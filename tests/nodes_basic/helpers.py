"""Prompt-building helpers shared by the node tests."""

import json

import torch

from graphengine import PromptValidationError


def const(kind: str, value: torch.Tensor | list, batch_index: list | None = None) -> dict:
    """A prompt entry producing `value` as an IMAGE / MASK / LATENT constant."""
    data = json.dumps(value.tolist() if isinstance(value, torch.Tensor) else value)
    inputs = {"data": data}
    if batch_index is not None:
        inputs["batch_index"] = json.dumps(batch_index)
    return {"class_type": f"{kind}Const", "inputs": inputs}


def load(executor, name: str, node: str = "LoadImage", slot: int = 0, channel: str | None = None):
    inputs = {"image": name} | ({"channel": channel} if channel else {})
    prompt = {"n": {"class_type": node, "inputs": inputs},
              "out": {"class_type": "Capture", "inputs": {"value": ["n", slot]}}}
    result = executor.execute(prompt)
    assert result.ok, result.error
    return result.outputs["out"]["value"][0]


def load_error(executor, name: str, node: str = "LoadImage", channel: str | None = None) -> str:
    """The message of a rejected load, at validation or at run time."""
    inputs = {"image": name} | ({"channel": channel} if channel else {})
    prompt = {"n": {"class_type": node, "inputs": inputs},
              "out": {"class_type": "Capture", "inputs": {"value": ["n", 0]}}}
    try:
        result = executor.execute(prompt)
    except PromptValidationError as exc:
        return json.dumps(exc.node_errors)
    assert not result.ok, f"{name!r} was loaded"
    return result.error["exception_message"]
