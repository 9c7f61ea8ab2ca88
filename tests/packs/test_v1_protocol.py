"""ComfyUI V1 node classes from test packs, run through real prompts: pixels, UI outputs, events and errors."""

from __future__ import annotations

import math

import pytest
import torch

from graphengine import PromptValidationError

from .conftest import solid

GREY = 128 / 255


def show(source: str, slot: int = 0) -> dict:
    return {"class_type": "ShowValue", "inputs": {"value": [source, slot]}}


def test_object_info_is_the_classes_declaration(registry):
    info = registry.node_info("ImageBrightness")
    assert info["input"] == {
        "required": {"image": ["IMAGE", {"tooltip": "The image to change."}],
                     "factor": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05, "display": "slider"}],
                     "channel": [["all", "red", "green", "blue"]]},
        "optional": {"clamp": ["BOOLEAN", {"default": True, "label_on": "clamp", "label_off": "raw"}]}}
    assert info["input_order"] == {"required": ["image", "factor", "channel"], "optional": ["clamp"]}
    assert info["output"] == ["IMAGE", "FLOAT"] and info["output_name"] == ["image", "mean"]
    assert info["output_is_list"] == [False, False]
    assert info["output_tooltips"] == ["The brightened image.", "Its mean value."]
    assert info["display_name"] == "Image Brightness (pack)" and info["python_module"] == "custom_nodes.v1_basic"
    assert info["category"] == "image/adjust" and info["description"] == "Multiplies pixel values by a factor."
    assert info["search_aliases"] == ["brightness", "exposure"] and info["output_node"] is False
    described = registry.node_info("DescribeNode")
    assert described["input"]["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID",
                                            "extra_pnginfo": "EXTRA_PNGINFO"}
    assert described["input_order"]["hidden"] == ["prompt", "unique_id", "extra_pnginfo"]
    assert described["deprecated"] is True and described["experimental"] is True
    assert described["output"] == ["NOTE"] and described["display_name"] == "DescribeNode"
    assert described["category"] == "utils" and described["output_node"] is True
    assert registry.node_info("SplitBatch")["output_is_list"] == [True]
    assert registry.node_info("JoinList")["is_input_list"] is True
    assert registry.node_info("LazySwitch")["input"]["required"]["on_true"] == ["*", {"lazy": True}]


def test_pack_node_changes_pixels_between_core_nodes(executor):
    prompt = {"1": solid(batch=2), "2": {"class_type": "ImageBrightness",
                                         "inputs": {"image": ["1", 0], "factor": 1.5, "channel": "red"}},
              "3": show("2", 1), "4": show("2", 0)}
    result = executor.execute(prompt, keep_values=True)
    assert result.ok, result.error
    (image,) = result.values["2"][0]
    assert image.shape == (2, 4, 4, 3)
    assert torch.allclose(image[..., 0], torch.full((2, 4, 4), GREY * 1.5))
    assert torch.allclose(image[..., 1:], torch.full((2, 4, 4, 2), GREY))
    assert result.values["2"][1] == [pytest.approx(float(image.mean()))]
    assert result.outputs["3"] == {"text": [str(float(image.mean()))]}


def test_optional_input_is_passed_only_when_given(executor):
    prompt = {"1": solid(color=0xFFFFFF), "2": {"class_type": "ImageBrightness",
                                                "inputs": {"image": ["1", 0], "factor": 2.0, "channel": "all",
                                                           "clamp": False}}, "3": show("2")}
    result = executor.execute(prompt, keep_values=True)
    assert result.ok and float(result.values["2"][0][0].max()) == pytest.approx(2.0)
    prompt["2"]["inputs"].pop("clamp")  # the function's own default (clamp) applies
    result = executor.execute(prompt, keep_values=True)
    assert float(result.values["2"][0][0].max()) == pytest.approx(1.0)


def test_hidden_inputs_and_ui_result_return(executor, events):
    prompt = {"7": solid(), "8": {"class_type": "DescribeNode", "inputs": {"text": "hi", "anything": ["7", 0]}}}
    result = executor.execute(prompt, extra_data={"extra_pnginfo": {"workflow": "w"}}, keep_values=True)
    assert result.ok, result.error
    line = "hi | node 8 | 2 nodes | shape [1, 4, 4, 3] | {'workflow': 'w'}"
    assert result.outputs["8"] == {"text": [line]}
    assert result.values["8"] == [[{"line": line}]]
    assert ("executed", {"node": "8", "display_node": "8", "output": {"text": [line]},
                         "prompt_id": result.prompt_id}) in events


def test_lazy_inputs_evaluate_only_the_branch_asked_for(executor):
    prompt = {"1": solid(color=0xFFFFFF), "2": solid(color=0x000000),
              "3": {"class_type": "FlowScale", "inputs": {"image": ["1", 0], "factor": 0.5}},
              "4": {"class_type": "FlowScale", "inputs": {"image": ["2", 0], "factor": 3.0}},
              "5": {"class_type": "LazySwitch", "inputs": {"select": True, "on_true": ["3", 0],
                                                           "on_false": ["4", 0]}},
              "6": show("5")}
    result = executor.execute(prompt)
    assert result.ok and result.outputs["6"] == {"text": ["0.5000"]}
    assert "3" in result.executed and "4" not in result.executed and "2" not in result.executed
    prompt["5"]["inputs"]["select"] = False
    result = executor.execute(prompt)
    assert result.outputs["6"] == {"text": ["0.0000"]} and "4" in result.executed and "3" not in result.executed


def test_node_expansion_runs_the_built_graph(executor, events):
    prompt = {"1": solid(color=0xFFFFFF), "2": {"class_type": "ScaleRepeatedly",
                                                "inputs": {"image": ["1", 0], "factor": 0.5, "times": 3}},
              "3": show("2"), "4": show("2", 1)}
    result = executor.execute(prompt, keep_values=True)
    assert result.ok, result.error
    assert [n for n in result.executed if n.startswith("2.")] == ["2.0.0.1", "2.0.0.2", "2.0.0.3"]
    assert torch.allclose(result.values["2"][0][0], torch.full((1, 4, 4, 3), 0.125))
    assert result.outputs["4"] == {"text": ["3"]}
    executing = [(d["node"], d["display_node"]) for kind, d in events if kind == "executing" and d["node"]]
    assert ("2.0.0.2", "2") in executing  # the editor highlights the expanding node
    states = next(d for kind, d in reversed(events) if kind == "progress_state")["nodes"]
    assert states["2.0.0.3"]["parent_node_id"] == "2" and states["2.0.0.3"]["display_node_id"] == "2"
    again = executor.execute(prompt)  # the expanding node is cached with its resolved outputs
    assert again.ok and again.executed == [] and again.outputs["3"] == {"text": ["0.1250"]}


def test_list_outputs_fan_out_and_list_inputs_gather(executor):
    prompt = {"1": solid(batch=3), "2": {"class_type": "SplitBatch", "inputs": {"images": ["1", 0]}},
              "3": {"class_type": "FlowScale", "inputs": {"image": ["2", 0], "factor": 2.0}},
              "4": {"class_type": "JoinList", "inputs": {"images": ["3", 0], "label": "three"}}}
    result = executor.execute(prompt, keep_values=True)
    assert result.ok, result.error
    assert [tuple(t.shape) for t in result.values["2"][0]] == [(1, 4, 4, 3)] * 3
    assert len(result.values["3"][0]) == 3  # one call per list item
    assert result.outputs["4"] == {"text": ["three: 3 images"]}
    assert result.values["4"][0][0].shape == (3, 4, 4, 3)
    assert torch.allclose(result.values["4"][0][0], torch.full((3, 4, 4, 3), 2 * GREY))


def test_is_changed_reruns_only_when_its_value_changes(executor, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("first")
    prompt = {"1": {"class_type": "ReadText", "inputs": {"path": str(note)}}, "2": show("1")}
    assert executor.execute(prompt).outputs["2"] == {"text": ["first"]}
    assert executor.execute(prompt).executed == []
    note.write_text("second")
    result = executor.execute(prompt)
    assert result.executed == ["1", "2"] and result.outputs["2"] == {"text": ["second"]}


def test_validate_inputs_replaces_checks_of_the_inputs_it_names(executor, registry):
    base = {"1": solid(), "2": {"class_type": "EvenOnly", "inputs": {"value": 12, "source": ["1", 0]}},
            "3": show("2")}
    result = executor.execute(base)  # 12 is above max=10, but VALIDATE_INPUTS names `value`: its own rule holds
    assert result.ok and result.outputs["3"] == {"text": ["12"]}
    odd = {**base, "2": {"class_type": "EvenOnly", "inputs": {"value": 3, "source": ["1", 0]}}}
    with pytest.raises(PromptValidationError) as caught:
        executor.execute(odd)
    (error,) = caught.value.node_errors["2"]["errors"]
    assert error["type"] == "custom_validation_failed" and error["details"] == "value must be even, got 3"


def test_validate_inputs_gets_the_linked_types_instead_of_the_type_check(executor):
    prompt = {"1": solid(), "2": {"class_type": "AsyncMean", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "EvenOnly", "inputs": {"value": 2, "source": ["2", 0]}}, "4": show("3")}
    with pytest.raises(PromptValidationError) as caught:
        executor.execute(prompt)
    (error,) = caught.value.node_errors["3"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "source must be an IMAGE or MASK, got FLOAT"


def test_execution_blocker_stops_consumers_and_reports_its_message(executor, events, tmp_path):
    prompt = {"1": solid(), "2": {"class_type": "Gate", "inputs": {"image": ["1", 0], "open": False,
                                                                   "message": "closed for now"}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "blocked"}},
              "4": {"class_type": "AsyncMean", "inputs": {"image": ["1", 0]}}, "5": show("4")}
    result = executor.execute(prompt)
    assert result.ok  # a block is not a failure: the other branch finished
    assert "3" not in result.outputs
    assert float(result.outputs["5"]["text"][0]) == pytest.approx(GREY)
    blocked = [data for kind, data in events if kind == "execution_error"]
    assert [(b["node_id"], b["exception_type"], b["exception_message"]) for b in blocked] == [
        ("3", "ExecutionBlocked", "Execution Blocked: closed for now")]
    assert not list((executor.registry.services.output_dir).glob("blocked*"))


def test_silent_blocker_sends_no_error(executor, events):
    prompt = {"1": solid(), "2": {"class_type": "Gate", "inputs": {"image": ["1", 0], "open": False,
                                                                   "message": ""}},
              "3": show("2")}
    result = executor.execute(prompt)
    assert result.ok and result.outputs == {}
    assert not [kind for kind, _ in events if kind == "execution_error"]


def test_a_raising_pack_node_is_a_structured_execution_error(executor):
    prompt = {"1": {"class_type": "ReadText", "inputs": {"path": "/nonexistent/graphengine/note.txt"}},
              "2": show("1")}
    result = executor.execute(prompt)
    assert result.status == "error"
    assert result.error["node_id"] == "1" and result.error["node_type"] == "ReadText"
    assert result.error["exception_type"] == "FileNotFoundError"
    assert math.isfinite(len(result.error["traceback"])) and result.error["traceback"]


def test_undeclared_linked_inputs_reach_a_kwargs_function(executor):
    prompt = {"1": {"class_type": "SolidImage", "inputs": {"width": 2, "height": 2, "value": 0.25}},
              "2": {"class_type": "AsyncMean", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "ScaleRepeatedly", "inputs": {"image": ["1", 0], "factor": 1.0, "times": 1}},
              "4": {"class_type": "JoinValues", "inputs": {"separator": ";", "mean": ["2", 0], "times": ["3", 1],
                                                           "dropped_constant": 5}},
              "5": show("4")}
    result = executor.execute(prompt)
    assert result.ok, result.error
    assert result.outputs["5"] == {"text": ["mean=0.25;times=1"]}  # undeclared constants are dropped, as in ComfyUI
    prompt["4"]["inputs"]["extra"] = ["99", 0]
    with pytest.raises(PromptValidationError) as caught:
        executor.execute(prompt)
    assert caught.value.node_errors["4"]["errors"][0]["type"] == "bad_linked_input"


def test_ui_workflow_with_pack_nodes_converts_and_runs(executor, registry):
    from graphengine.ui_convert import convert

    def ui_node(id, type, widgets, inputs=(), outputs=()):
        return {"id": id, "type": type, "pos": [0, 0], "size": [100, 50], "flags": {}, "order": id, "mode": 0,
                "inputs": list(inputs), "outputs": list(outputs), "properties": {}, "widgets_values": widgets}

    workflow = {"last_node_id": 3, "last_link_id": 2, "version": 0.4, "links": [[1, 1, 0, 2, 0, "IMAGE"],
                                                                               [2, 2, 0, 3, 0, "IMAGE"]],
                "nodes": [ui_node(1, "SeededNoise", [7, "randomize", 3, "uniform"],
                                  outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]}]),
                          ui_node(2, "ImageBrightness", [0.5, "all", True],
                                  inputs=[{"name": "image", "type": "IMAGE", "link": 1}],
                                  outputs=[{"name": "image", "type": "IMAGE", "links": [2]}]),
                          ui_node(3, "ShowValue", [], inputs=[{"name": "value", "type": "*", "link": 2}])]}
    prompt = convert(workflow, registry)
    assert prompt["1"]["inputs"] == {"seed": 7, "size": 3, "kind": "uniform"}
    assert prompt["2"]["inputs"] == {"factor": 0.5, "channel": "all", "clamp": True, "image": ["1", 0]}
    result = executor.execute(prompt, keep_values=True)
    assert result.ok, result.error
    expected = torch.rand((1, 3, 3, 3), generator=torch.Generator().manual_seed(7)) * 0.5
    assert torch.allclose(result.values["2"][0][0], expected)


def test_node_instances_live_while_the_node_stays_in_the_prompts(executor):
    def counted(node_id: str) -> str:
        prompt = {node_id: {"class_type": "CallCounter", "inputs": {}}, "show": show(node_id)}
        return executor.execute(prompt).outputs["show"]["text"][0]

    assert [counted("a"), counted("a"), counted("a")] == ["1", "2", "3"]  # IS_CHANGED NaN: runs every time
    assert counted("b") == "1"  # another node, another instance; "a" left the prompt
    assert counted("a") == "1"


def test_list_input_node_gets_lists_in_check_lazy_status(executor):
    prompt = {"1": solid(color=0xFFFFFF), "2": solid(color=0x000000),
              "3": {"class_type": "ListPick", "inputs": {"use_first": False, "a": ["1", 0], "b": ["2", 0]}},
              "4": show("3")}
    result = executor.execute(prompt)
    assert result.ok, result.error
    assert result.outputs["4"] == {"text": ["0.0000"]} and "1" not in result.executed
