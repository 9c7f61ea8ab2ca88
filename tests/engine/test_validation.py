import math

import pytest

from graphengine import Link, PromptValidationError, validate_prompt


def body(prompt, registry, targets=None):
    with pytest.raises(PromptValidationError) as info:
        validate_prompt(prompt, registry, targets)
    return info.value.body()


def chain(value=1, b=2):
    return {"1": {"class_type": "Number", "inputs": {"value": value}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": b}},
            "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}, "_meta": {"title": "Show it"}}}


def node_error_types(b, node_id):
    return [e["type"] for e in b["node_errors"][node_id]["errors"]]


def test_valid_prompt_coerces_values(registry):
    v = validate_prompt(chain(value="7", b=3.0), registry)
    assert v.outputs == ["3"]
    assert v.nodes["1"].inputs["value"] == 7 and isinstance(v.nodes["2"].inputs["b"], int)
    assert v.nodes["2"].inputs["a"] == Link("1", 0)
    assert v.api_prompt()["2"]["inputs"] == {"a": ["1", 0], "b": 3}


@pytest.mark.parametrize("prompt, kind", [
    ([], "invalid_prompt"),
    ("text", "invalid_prompt"),
    ({"1": 5}, "invalid_prompt"),
    ({"1": {"inputs": {}}}, "missing_node_type"),
    ({"1": {"class_type": 12}}, "missing_node_type"),
    ({"1": {"class_type": "NoSuchNode", "inputs": {}}}, "missing_node_type"),
    ({"1": {"class_type": "Number", "inputs": []}}, "invalid_prompt"),
    ({1: {"class_type": "Number", "inputs": {}}}, "invalid_prompt"),
    ({"1": {"class_type": "Number", "inputs": {"value": 1}}}, "prompt_no_outputs"),
    ({}, "prompt_no_outputs"),
])
def test_prompt_level_errors(registry, prompt, kind):
    b = body(prompt, registry)
    assert b["error"]["type"] == kind
    assert set(b["error"]) == {"type", "message", "details", "extra_info"}


def test_unknown_class_names_node_and_title(registry):
    b = body({"5": {"class_type": "Nope", "inputs": {}, "_meta": {"title": "My node"}}}, registry)
    assert b["error"] == {"type": "missing_node_type", "message": "Cannot execute because node Nope does not exist.",
                          "details": "Node ID '#5'",
                          "extra_info": {"node_id": "5", "class_type": "Nope", "node_title": "My node",
                                         "missing_nodes": [{"node_id": "5", "class_type": "Nope",
                                                            "node_title": "My node", "hint": None}]}}
    assert b["node_errors"] == {}


def test_every_missing_node_type_in_one_answer_with_hints(registry):
    registry.add_missing_node_hints({"KSampler (Efficient)": "comes from Efficiency Nodes",
                                     "IPAdapter*": "comes from IPAdapter plus", "Show*": "never used: ShowValue exists"})
    prompt = {**chain(), "7": {"class_type": "KSampler (Efficient)", "inputs": {}},
              "8": {"class_type": "Mystery", "inputs": {}, "_meta": {"title": "Odd"}},
              "9": {"class_type": "IPAdapterAdvanced", "inputs": {}},
              "10": {"class_type": "Mystery", "inputs": {}}}
    error = body(prompt, registry)["error"]
    assert error["type"] == "missing_node_type"
    # the first sentence is ComfyUI's for the first missing node; the others follow, each class once
    assert error["message"] == ("Cannot execute because node KSampler (Efficient) does not exist. "
                                "Also missing: Mystery, IPAdapterAdvanced.")
    assert error["details"].splitlines() == ["Node ID '#7' (KSampler (Efficient)): comes from Efficiency Nodes",
                                             "Node ID '#8' (Mystery)", "Node ID '#9' (IPAdapterAdvanced): comes from "
                                             "IPAdapter plus", "Node ID '#10' (Mystery)"]
    extra = error["extra_info"]
    assert (extra["node_id"], extra["class_type"]) == ("7", "KSampler (Efficient)")
    assert [(m["node_id"], m["class_type"], m["node_title"], m["hint"]) for m in extra["missing_nodes"]] == [
        ("7", "KSampler (Efficient)", None, "comes from Efficiency Nodes"), ("8", "Mystery", "Odd", None),
        ("9", "IPAdapterAdvanced", None, "comes from IPAdapter plus"), ("10", "Mystery", None, None)]
    assert registry.missing_node_hint("ShowValue") is None  # registered types never get a hint


def test_failed_outputs_details_hold_only_the_outputs_own_errors(registry):
    prompt = chain()
    prompt["2"]["inputs"]["b"] = "abc"  # the fault is upstream of the output: ComfyUI's details are empty
    b = body(prompt, registry)
    assert b["error"]["details"] == "" and node_error_types(b, "2") == ["invalid_input_type"]
    del prompt["3"]["inputs"]["value"]  # now the output node has its own error
    assert body(prompt, registry)["error"]["details"] == "Required input is missing: value"


@pytest.mark.parametrize("value, kind", [
    (2**31, "value_bigger_than_max"),
    (-(2**31) - 1, "value_smaller_than_min"),
    ("abc", "invalid_input_type"),
    (1.5, "invalid_input_type"),
    (float("nan"), "invalid_input_type"),
    (float("inf"), "invalid_input_type"),
    (10**40, "invalid_input_type"),
    (True, "invalid_input_type"),
    ([1, 2, 3], "bad_linked_input"),
    (["9", 0], "bad_linked_input"),
    (["1", 5], "bad_linked_input"),
    (["1", 0.0], "bad_linked_input"),
    ([1, 0], "bad_linked_input"),
    ({"x": 1}, "invalid_input_type"),
    (None, "invalid_input_type"),
])
def test_input_errors(registry, value, kind):
    prompt = chain()
    prompt["2"]["inputs"]["b"] = value
    b = body(prompt, registry)
    assert b["error"]["type"] == "prompt_outputs_failed_validation"
    assert node_error_types(b, "2") == [kind]
    assert b["node_errors"]["2"]["dependent_outputs"] == ["3"]
    assert b["node_errors"]["2"]["class_type"] == "Add"


def test_missing_required_input(registry):
    prompt = chain()
    del prompt["2"]["inputs"]["b"]
    b = body(prompt, registry)
    assert b["node_errors"]["2"]["errors"][0] == {"type": "required_input_missing",
                                                  "message": "Required input is missing", "details": "b",
                                                  "extra_info": {"input_name": "b"}}


def test_return_type_mismatch(registry):
    from typing import Annotated
    from graphengine import Node, Output, String

    class Text(Node):
        RETURNS = (Output("STRING"),)
        text: Annotated[str, String()] = ""

        def execute(self, ctx):
            return (self.text,)

    registry.register(Text)
    prompt = chain()
    prompt["9"] = {"class_type": "Text", "inputs": {"text": "hi"}}
    prompt["2"]["inputs"]["a"] = ["9", 0]
    err = body(prompt, registry)["node_errors"]["2"]["errors"][0]
    assert err["type"] == "return_type_mismatch"
    assert err["details"] == "a, received_type(STRING) mismatch input_type(INT)"
    assert err["extra_info"]["input_config"] == ["INT", {"forceInput": True}]  # the input's full /object_info entry
    prompt["2"]["inputs"]["a"] = ["1", 0]
    prompt["3"]["inputs"]["value"] = ["9", 0]  # "*" accepts anything
    assert validate_prompt(prompt, registry).outputs == ["3"]


def test_string_false_is_false_and_boolean_coercion(registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Switch", "inputs": {"select": "false", "on_true": ["1", 0], "on_false": ["1", 0]}},
              "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}}}
    assert validate_prompt(prompt, registry).nodes["2"].inputs["select"] is False
    prompt["2"]["inputs"]["select"] = "TRUE"
    assert validate_prompt(prompt, registry).nodes["2"].inputs["select"] is True
    prompt["2"]["inputs"]["select"] = "maybe"
    assert node_error_types(body(prompt, registry), "2") == ["invalid_input_type"]


def test_value_wrapper_is_unwrapped(registry):
    prompt = chain(value={"__value__": 4})
    assert validate_prompt(prompt, registry).nodes["1"].inputs["value"] == 4


def test_some_valid_outputs_run_and_errors_are_reported(registry):
    prompt = chain()
    prompt["10"] = {"class_type": "Add", "inputs": {"a": ["1", 0], "b": "x"}}
    prompt["11"] = {"class_type": "ShowValue", "inputs": {"value": ["10", 0]}}
    v = validate_prompt(prompt, registry)
    assert v.outputs == ["3"]
    assert set(v.nodes) == {"1", "2", "3"}
    assert v.node_errors["10"]["dependent_outputs"] == ["11"]
    assert "11" not in v.node_errors  # an invalid ancestor does not add an entry to the dependent


def test_partial_execution_targets(registry):
    prompt = chain()
    prompt["4"] = {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}
    v = validate_prompt(prompt, registry, ["4"])
    assert v.outputs == ["4"] and set(v.nodes) == {"1", "4"}
    assert body(prompt, registry, [])["error"]["type"] == "prompt_no_outputs"
    assert body(prompt, registry, "4")["error"]["type"] == "invalid_prompt"


def test_long_cycle_is_found_without_recursion_limit(registry):
    n = 5000
    prompt = {str(i): {"class_type": "Add", "inputs": {"a": [str((i + 1) % n), 0], "b": 1}} for i in range(n)}
    prompt["out"] = {"class_type": "ShowValue", "inputs": {"value": ["0", 0]}}
    b = body(prompt, registry)
    assert node_error_types(b, "0") == ["dependency_cycle"]
    assert len(b["node_errors"]) == n
    cycle_error = b["node_errors"]["0"]["errors"][0]
    assert cycle_error["details"].count("(Add) -> ") == 12 and "4988 more" in cycle_error["details"]
    assert cycle_error["extra_info"]["cycle_length"] == n
    assert len(str(b)) < 5_000_000  # bounded error body


def test_long_chain_validates(registry):
    n = 3000
    prompt = {"0": {"class_type": "Number", "inputs": {"value": 0}}}
    prompt.update({str(i): {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": 1}} for i in range(1, n)})
    prompt["out"] = {"class_type": "ShowValue", "inputs": {"value": [str(n - 1), 0]}}
    assert len(validate_prompt(prompt, registry).nodes) == n + 1


def test_custom_validation_hook(registry):
    from typing import Annotated
    from graphengine import Combo, Node, Output

    class PickFile(Node):
        RETURNS = (Output("STRING"),)
        CUSTOM_VALIDATED = frozenset({"name"})
        name: Annotated[str, Combo(["a.png"])] = "a.png"

        @classmethod
        def validate_inputs(cls, inputs, services=None):
            return True if inputs["name"].endswith(".png") else f"Invalid image file: {inputs['name']}"

        def execute(self, ctx):
            return (self.name,)

    registry.register(PickFile)
    prompt = {"1": {"class_type": "PickFile", "inputs": {"name": "sub/other.png"}},
              "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}
    assert validate_prompt(prompt, registry).nodes["1"].inputs["name"] == "sub/other.png"  # not in the list: hook decides
    prompt["1"]["inputs"]["name"] = "x.txt"
    b = body(prompt, registry)
    assert b["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    assert "Invalid image file: x.txt" in b["node_errors"]["1"]["errors"][0]["details"]


def test_combo_not_in_list(registry):
    from typing import Annotated
    from graphengine import Combo, Node, Output

    class Pick(Node):
        RETURNS = (Output("STRING"),)
        choice: Annotated[str, Combo([f"opt{i}" for i in range(30)])] = "opt0"

        def execute(self, ctx):
            return (self.choice,)

    registry.register(Pick)
    prompt = {"1": {"class_type": "Pick", "inputs": {"choice": "nope"}},
              "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}
    err = body(prompt, registry)["node_errors"]["1"]["errors"][0]
    assert err["type"] == "value_not_in_list"
    assert err["details"] == "choice: 'nope' not in (list of length 30)"
    assert err["extra_info"]["input_config"] is None  # ComfyUI leaves long lists out


    class Few(Node):
        RETURNS = (Output("STRING"),)
        choice: Annotated[str, Combo(["a", "b"], tooltip="pick one")] = "a"

        def execute(self, ctx):
            return (self.choice,)

    registry.register(Few)
    prompt["1"]["class_type"] = "Few"
    err = body(prompt, registry)["node_errors"]["1"]["errors"][0]
    assert err["extra_info"]["input_config"] == [["a", "b"], {"default": "a", "tooltip": "pick one"}]


def test_floats_reject_nan_and_accept_numeric_strings(registry):
    from typing import Annotated
    from graphengine import Float, Node, Output

    class Scale(Node):
        RETURNS = (Output("FLOAT"),)
        factor: Annotated[float, Float(min=0.0, max=10.0)] = 1.0

        def execute(self, ctx):
            return (self.factor,)

    registry.register(Scale)
    prompt = {"1": {"class_type": "Scale", "inputs": {"factor": "2.5"}},
              "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}
    assert validate_prompt(prompt, registry).nodes["1"].inputs["factor"] == 2.5
    for bad, kind in [("nan", "invalid_input_type"), (math.inf, "invalid_input_type"), (-1, "value_smaller_than_min"),
                      (1e308 * 10, "invalid_input_type"), (11, "value_bigger_than_max")]:
        prompt["1"]["inputs"]["factor"] = bad
        assert node_error_types(body(prompt, registry), "1") == [kind], bad
