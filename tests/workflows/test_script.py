"""The Python graph builder on a tiny pure-Python node set: handles, input checks, API export, running."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import pytest

from graphengine import Combo, Int, Node, NodeOutput, NodeRegistry, Output, Socket, String, validate_prompt
from graphengine.examples import EXAMPLE_NODES
from graphengine.script import Graph, NodeHandle, OutputRef


class DivMod(Node):
    """Quotient and remainder."""

    RETURNS = (Output("INT", name="quotient"), Output("INT", name="remainder"))
    a: Annotated[int, Socket("INT")]
    b: Annotated[int, Int(min=1, max=100)] = 3

    def execute(self, ctx) -> tuple:
        return divmod(self.a, self.b)


class Describe(Node):
    """A number as text, and the text's length."""

    RETURNS = (Output("STRING", name="text"), Output("INT", name="length"))
    value: Annotated[int, Socket("INT")]
    style: Annotated[str, Combo(["plain", "padded"])]
    suffix: Annotated[str, String(optional=True)] = ""

    def execute(self, ctx) -> tuple:
        text = (f"{self.value:05d}" if self.style == "padded" else str(self.value)) + (self.suffix or "")
        return text, len(text)


class Unbox(Node):
    """Takes a custom socket type."""

    RETURNS = (Output("INT"),)
    box: Annotated[Any, Socket("BOX")]

    def execute(self, ctx) -> tuple:
        return (self.box,)


class Collect(Node):
    """Output node showing any value."""

    OUTPUT_NODE = True
    value: Annotated[Any, Socket("*")]

    def execute(self, ctx) -> NodeOutput:
        return NodeOutput((), ui={"value": [self.value]})


@pytest.fixture
def registry() -> NodeRegistry:
    reg = NodeRegistry()
    reg.register_all([*EXAMPLE_NODES, DivMod, Describe, Unbox, Collect], python_module="tests")
    return reg


@pytest.fixture
def g(registry) -> Graph:
    return Graph(registry)


def test_pipeline_reads_like_python_and_exports_the_hand_written_prompt(g):
    number = g.Number(value=17)
    quotient, remainder = g.DivMod(a=number, b=5)
    text, length = g.Describe(value=quotient, style="padded")
    g.Collect(value=text, _title="Shown text")
    g.Collect(value=g.Add(a=remainder, b=length))
    assert g.to_api() == {
        "1": {"class_type": "Number", "inputs": {"value": 17}, "_meta": {"title": "Number"}},
        "2": {"class_type": "DivMod", "inputs": {"a": ["1", 0], "b": 5}, "_meta": {"title": "DivMod"}},
        "3": {"class_type": "Describe", "inputs": {"value": ["2", 0], "style": "padded"},
              "_meta": {"title": "Describe"}},
        "4": {"class_type": "Collect", "inputs": {"value": ["3", 0]}, "_meta": {"title": "Shown text"}},
        "5": {"class_type": "Add", "inputs": {"a": ["2", 1], "b": ["3", 1]}, "_meta": {"title": "Add"}},
        "6": {"class_type": "Collect", "inputs": {"value": ["5", 0]}, "_meta": {"title": "Collect"}},
    }


def test_run_in_process_executes_the_graph(g):
    quotient, remainder = g.DivMod(a=g.Number(value=17), b=5)
    shown = g.Collect(value=g.Describe(value=quotient, style="padded", suffix="!").text)
    total = g.Collect(value=g.Add(a=remainder, b=10))
    result = g.run()
    assert result.ok, result.error
    assert result.outputs[shown.id] == {"value": ["00003!"]}
    assert result.outputs[total.id] == {"value": [12]}


def test_handles_unpack_index_and_name_outputs(g):
    node = g.DivMod(a=g.Number(value=1))
    assert isinstance(node, NodeHandle) and len(node) == 2
    first, second = node
    assert (first.slot, second.slot) == (0, 1)
    assert node[1] == second and node["remainder"] == second and node.remainder == second
    assert node.quotient.link() == [node.id, 0]
    single = g.Number(value=2)
    assert single.INT == single[0] and single.value == single[0]  # by type, and by output name
    described = g.Describe(value=single, style="plain")
    assert described.STRING == described.text and described.INT == described.length  # type unique among outputs
    with pytest.raises(AttributeError, match="no output named 'nope'.*quotient, remainder"):
        node.nope
    with pytest.raises(IndexError, match="has 2 outputs"):
        node[2]


def test_a_node_handle_is_a_link_when_one_output_fits(g):
    number = g.Number(value=4)
    added = g.Add(a=number)  # single output
    described = g.Describe(value=added, style="plain")
    g.Collect(value=described.text)
    add2 = g.Add(a=g.DivMod(a=number, b=2)[0])
    prompt = g.to_api()
    assert prompt[added.id]["inputs"]["a"] == [number.id, 0]
    assert prompt[add2.id]["inputs"]["a"][1] == 0
    with pytest.raises(TypeError, match=r"Add \(node \d+\): input 'a' \(INT\): DivMod \(node \d+\) has 2 outputs"):
        g.Add(a=g.DivMod(a=number))


def test_widget_defaults_are_filled_and_left_out_optionals_stay_out(g):
    node = g.DivMod(a=g.Number())
    prompt = g.to_api()
    assert prompt[node.id]["inputs"]["b"] == 3
    assert prompt["1"]["inputs"] == {"value": 0}
    described = g.Describe(value=node.quotient, style="plain")
    assert "suffix" not in g.to_api()[described.id]["inputs"]


def test_constants_are_coerced_like_the_validator_does(g):
    node = g.DivMod(a=g.Number(value="12"), b=4.0)
    prompt = g.to_api()
    assert prompt["1"]["inputs"]["value"] == 12 and isinstance(prompt["1"]["inputs"]["value"], int)
    assert prompt[node.id]["inputs"]["b"] == 4 and isinstance(prompt[node.id]["inputs"]["b"], int)


@pytest.mark.parametrize("inputs, error, pattern", [
    ({"a": "LINK", "bb": 2}, TypeError, r"DivMod \(node 2\): unknown input 'bb' \(did you mean 'b'\?\); inputs are: a, b"),
    ({}, TypeError, r"DivMod \(node 2\): missing required input 'a' \(INT\)"),
    ({"a": "LINK", "b": 0}, ValueError, r"DivMod \(node 2\): input 'b': Value 0 smaller than min of 1"),
    ({"a": "LINK", "b": 101}, ValueError, r"input 'b': Value 101 bigger than max of 100"),
    ({"a": "LINK", "b": "three"}, TypeError, r"input 'b': Failed to convert an input value to a INT value"),
    ({"a": "LINK", "b": 2.5}, TypeError, r"input 'b': Failed to convert"),
])
def test_bad_inputs_fail_at_build_time_naming_node_and_input(g, inputs, error, pattern):
    number = g.Number(value=1)
    inputs = {k: (number if v == "LINK" else v) for k, v in inputs.items()}
    with pytest.raises(error, match=pattern):
        g.DivMod(**inputs)
    assert len(g) == 1 and g.to_api().keys() == {"1"}  # nothing half-added


def test_wrong_link_type_and_bad_combo_and_constant_for_a_socket(g):
    text = g.Describe(value=g.Number(value=1), style="plain").text
    with pytest.raises(TypeError, match=r"Add \(node 3\): input 'a' takes INT, got <STRING output 0 \(text\)"):
        g.Add(a=text)
    number = g.Number(value=2)
    with pytest.raises(ValueError, match=r"Describe \(node 4\): input 'style': Value not in list"):
        g.Describe(value=number, style="fancy")
    with pytest.raises(TypeError, match=r"Unbox \(node 4\): input 'box': Input 'box' must be linked to a BOX"):
        g.Unbox(box=5)
    assert g.Add(a=5).id == "4"  # a socket of a widget type (forceInput) may still take a constant


def test_links_across_graphs_and_unknown_node_types_are_refused(g, registry):
    other = Graph(registry)
    foreign = other.Number(value=1)
    with pytest.raises(ValueError, match="another graph"):
        g.Add(a=foreign)
    with pytest.raises(AttributeError, match="no node type 'Nunber'.*did you mean Number"):
        g.Nunber(value=1)


def test_ids_are_stable_in_creation_order_and_may_be_chosen(g):
    a = g.Number(value=1)
    b = g.Number(value=2, _id="seed")
    c = g.Number(value=3)
    assert [a.id, b.id, c.id] == ["1", "seed", "2"]
    with pytest.raises(ValueError, match="already used"):
        g.Number(_id="seed")


def test_factories_carry_the_schema_signature_and_description(g):
    signature = inspect.signature(g.DivMod)
    assert list(signature.parameters) == ["a", "b"]
    assert signature.parameters["a"].default is inspect.Parameter.empty
    assert signature.parameters["b"].default == 3 and signature.parameters["b"].annotation is int
    assert "Quotient and remainder." in g.DivMod.__doc__ and "remainder (INT)" in g.DivMod.__doc__
    assert "DivMod" in dir(g)


def test_exported_prompt_validates_and_output_refs_are_plain_data(g, registry):
    g.Collect(value=g.Add(a=g.Number(value=2), b=3))
    validated = validate_prompt(g.to_api(), registry)
    assert validated.outputs == ["3"]
    ref = g.Number(value=1)[0]
    assert isinstance(ref, OutputRef) and ref.type == "INT" and ref.name == "value"
