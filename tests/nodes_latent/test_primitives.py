"""Primitive nodes and a graph wiring them into latent nodes' widget inputs."""

import sys

import pytest
import torch

from .conftest import lat, ramp


@pytest.mark.parametrize(("class_type", "value"), [("PrimitiveInt", -7), ("PrimitiveInt", sys.maxsize),
                                                   ("PrimitiveFloat", 2.5), ("PrimitiveString", "a cat"),
                                                   ("PrimitiveStringMultiline", "two\nlines"),
                                                   ("PrimitiveBoolean", True), ("PrimitiveBoolean", False)])
def test_primitives_pass_their_value_on(run, class_type, value):
    assert run(class_type, {"value": value}) == value


def test_primitive_widgets_are_required_and_bounded(registry, failure):
    info = registry.object_info()
    assert info["PrimitiveInt"]["input"]["required"]["value"][1]["control_after_generate"] is True
    assert info["PrimitiveStringMultiline"]["input"]["required"]["value"][1]["multiline"] is True
    assert {info[n]["display_name"] for n in ("PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
                                              "PrimitiveStringMultiline", "PrimitiveBoolean")} == \
        {"Int", "Float", "String", "String (Multiline)", "Boolean"}
    assert failure("PrimitiveInt", {})[0]["type"] == "required_input_missing"
    assert failure("PrimitiveInt", {"value": sys.maxsize + 1})[0]["type"] == "value_bigger_than_max"
    assert failure("PrimitiveFloat", {"value": "x"})[0]["type"] == "invalid_input_type"


def test_graph_of_primitives_and_latent_nodes(executor):
    s = ramp(1, 4, 2, 2)
    prompt = {
        "a": lat(s),
        "k": {"class_type": "PrimitiveFloat", "inputs": {"value": 3.0}},
        "i": {"class_type": "PrimitiveInt", "inputs": {"value": 8}},
        "mul": {"class_type": "LatentMultiply", "inputs": {"samples": ["a", 0], "multiplier": ["k", 0]}},
        "add": {"class_type": "LatentAdd", "inputs": {"samples1": ["mul", 0], "samples2": ["a", 0]}},
        "cut": {"class_type": "LatentCut", "inputs": {"samples": ["add", 0], "dim": "x", "index": 0, "amount": 1}},
        "comp": {"class_type": "LatentComposite", "inputs": {"samples_to": ["add", 0], "samples_from": ["cut", 0],
                                                             "x": ["i", 0], "y": 0, "feather": 0}},
        "out": {"class_type": "Capture", "inputs": {"value": ["comp", 0]}},
    }
    result = executor.execute(prompt)
    assert result.ok, result.error
    four = s * 3.0 + s
    expected = four.clone()
    expected[..., 1:2] = four[..., 0:1]  # column 0 pasted at x = 8 px = 1 latent column
    assert torch.equal(result.outputs["out"]["value"][0]["samples"], expected)
    rerun = executor.execute(prompt)
    assert rerun.executed == []  # fully cached
