"""UI workflow (editor format) → API prompt, on hand-built workflows covering each conversion rule."""

from typing import Annotated, Any

import pytest

from graphengine import Combo, Executor, Int, Node, NodeOutput, Output, Socket, String
from graphengine.ui_convert import UIConversionError, convert


class Seeded(Node):
    """A node with a seed widget (control_after_generate) followed by other widgets."""

    RETURNS = (Output("INT"),)
    seed: Annotated[int, Int(min=0, max=2**64 - 1, control_after_generate=True)] = 0
    steps: Annotated[int, Int(min=1, max=100)] = 20
    mode: Annotated[str, Combo(["a", "b"])] = "a"
    offset: Annotated[int, Socket("INT", optional=True)] = None

    def execute(self, ctx):
        return (self.seed + self.steps + (self.offset or 0),)


class Upload(Node):
    RETURNS = (Output("STRING"),)
    image: Annotated[str, Combo(["x.png", "y.png"], extra={"image_upload": True})] = "x.png"

    def execute(self, ctx):
        return (self.image,)


class Text(Node):
    OUTPUT_NODE = True
    RETURNS = ()
    text: Annotated[str, String(multiline=True)] = ""
    value: Annotated[Any, Socket("*", optional=True)] = None

    def execute(self, ctx):
        return NodeOutput(ui={"text": [f"{self.text}:{self.value}"]})


@pytest.fixture
def reg(registry):
    registry.register_all([Seeded, Upload, Text])
    return registry


def node(id, type, inputs=(), outputs=(), widgets=None, mode=0, title=None):
    n = {"id": id, "type": type, "pos": [0, 0], "size": [100, 50], "flags": {}, "order": 0, "mode": mode,
         "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs], "properties": {},
         "widgets_values": widgets if widgets is not None else []}
    if title:
        n["title"] = title
    return n


def inp(name, type, link=None, widget=False):
    d = {"name": name, "type": type, "link": link}
    if widget:
        d["widget"] = {"name": name}
    return d


def out(name, type, links=()):
    return {"name": name, "type": type, "links": list(links), "slot_index": 0}


def workflow(nodes, links, **extra):
    return {"last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": extra.pop("extra", {}), "version": 0.4, **extra}


def basic():
    return workflow(
        [node(1, "Seeded", [inp("offset", "INT")], [out("INT", "INT", [1])], [5, "randomize", 7, "b"]),
         node(2, "Text", [inp("value", "*", 1)], [], ["hello"], title="Show")],
        [[1, 1, 0, 2, 0, "INT"]])


def test_widgets_skip_the_control_slot_and_links_become_pairs(reg):
    api = convert(basic(), reg)
    assert api == {"1": {"inputs": {"seed": 5, "steps": 7, "mode": "b"}, "class_type": "Seeded",
                         "_meta": {"title": "Seeded"}},
                   "2": {"inputs": {"text": "hello", "value": ["1", 0]}, "class_type": "Text",
                         "_meta": {"title": "Show"}}}
    assert Executor(reg).execute(api).outputs["2"] == {"text": ["hello:12"]}


def test_control_after_generate_on_request(reg):
    wf = basic()
    for control, expected in [("increment", 6), ("decrement", 4), ("fixed", 5)]:
        wf["nodes"][0]["widgets_values"][1] = control
        assert convert(wf, reg, controls="apply")["1"]["inputs"]["seed"] == expected
        assert convert(wf, reg)["1"]["inputs"]["seed"] == 5
    wf["nodes"][0]["widgets_values"][1] = "randomize"
    first, second = (convert(wf, reg, controls="apply", seed=s)["1"]["inputs"]["seed"] for s in (1, 2))
    assert first != second and 0 <= first < 2**64


def test_image_upload_slot_is_skipped(reg):
    wf = workflow([node(1, "Upload", [], [out("STRING", "STRING", [1])], ["y.png", "image"]),
                   node(2, "Text", [inp("value", "*", 1)], [], ["t"])], [[1, 1, 0, 2, 0, "STRING"]])
    assert convert(wf, reg)["1"]["inputs"] == {"image": "y.png"}


def test_frontend_only_nodes_are_resolved(reg):
    wf = workflow(
        [node(1, "Seeded", [inp("offset", "INT", 4), inp("seed", "INT", 3, widget=True)], [out("INT", "INT", [1])],
              [5, "fixed", 7, "a"]),
         node(2, "Reroute", [inp("", "*", 1)], [out("", "INT", [2])]),
         node(5, "Reroute", [inp("", "*", 2)], [out("", "INT", [5])]),
         node(6, "Text", [inp("value", "*", 5)], [], ["x"]),
         node(7, "PrimitiveNode", [], [out("INT", "INT", [3])], [1234, "fixed"]),
         node(8, "Number", [], [out("value", "INT", [4])], [100]),
         node(9, "Note", [], [], ["just a note"]),
         node(10, "MarkdownNote", [], [], ["# notes"])],
        [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 5, 0, "*"], [5, 5, 0, 6, 0, "*"], [3, 7, 0, 1, 1, "INT"],
         [4, 8, 0, 1, 0, "INT"]])
    api = convert(wf, reg)
    assert set(api) == {"1", "6", "8"}
    assert api["1"]["inputs"] == {"seed": 1234, "steps": 7, "mode": "a", "offset": ["8", 0]}
    assert api["6"]["inputs"]["value"] == ["1", 0]
    assert Executor(reg).execute(api).outputs["6"] == {"text": ["x:1341"]}


def test_muted_nodes_are_dropped_and_bypassed_nodes_rewired(reg):
    wf = workflow(
        [node(1, "Number", [], [out("value", "INT", [1])], [3]),
         node(2, "Add", [inp("a", "INT", 1)], [out("INT", "INT", [2])], [10], mode=4),
         node(3, "Add", [inp("a", "INT", 2)], [out("INT", "INT", [3])], [100]),
         node(4, "Text", [inp("value", "*", 3)], [], ["r"]),
         node(5, "Text", [], [], ["muted"], mode=2)],
        [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"], [3, 3, 0, 4, 0, "INT"]])
    api = convert(wf, reg)
    assert set(api) == {"1", "3", "4"}
    assert api["3"]["inputs"]["a"] == ["1", 0]
    assert Executor(reg).execute(api).outputs["4"] == {"text": ["r:103"]}


def test_schema_1_links_and_subgraphs_expand_with_path_ids(reg):
    inner = {
        "id": "a1b2", "name": "AddTen", "version": 1,
        "inputs": [{"id": "i0", "name": "a", "type": "INT", "linkIds": [11]}],
        "outputs": [{"id": "o0", "name": "out", "type": "INT", "linkIds": [12]}],
        "nodes": [node(1, "Add", [inp("a", "INT", 11)], [out("INT", "INT", [12])], [10]),
                  node(2, "Add", [inp("a", "INT", 13)], [out("INT", "INT", [])], [1000])],
        "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "INT"},
                  {"id": 12, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "INT"},
                  {"id": 13, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "INT"}],
    }
    wf = {"version": 1, "state": {"lastNodeId": 9, "lastLinkId": 9}, "definitions": {"subgraphs": [inner]},
          "nodes": [node(1, "Number", [], [out("value", "INT", [1])], [5]),
                    node(7, "a1b2", [inp("a", "INT", 1)], [out("out", "INT", [2])], []),
                    node(3, "Text", [inp("value", "*", 2)], [], ["sg"])],
          "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "INT"},
                    {"id": 2, "origin_id": 7, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "INT"}]}
    api = convert(wf, reg)
    assert set(api) == {"1", "7:1", "7:2", "3"}
    assert api["7:1"]["inputs"]["a"] == ["1", 0] and api["3"]["inputs"]["value"] == ["7:1", 0]
    assert Executor(reg).execute(api).outputs["3"] == {"text": ["sg:15"]}


def test_nested_subgraphs(reg):
    leaf = {"id": "leaf", "inputs": [{"name": "a", "type": "INT"}], "outputs": [{"name": "o", "type": "INT"}],
            "nodes": [node(1, "Add", [inp("a", "INT", 1)], [out("INT", "INT", [2])], [1])],
            "links": [[1, -10, 0, 1, 0, "INT"], [2, 1, 0, -20, 0, "INT"]]}
    mid = {"id": "mid", "inputs": [{"name": "a", "type": "INT"}], "outputs": [{"name": "o", "type": "INT"}],
           "nodes": [node(4, "leaf", [inp("a", "INT", 1)], [out("o", "INT", [2])], [])],
           "links": [[1, -10, 0, 4, 0, "INT"], [2, 4, 0, -20, 0, "INT"]]}
    wf = workflow([node(1, "Number", [], [out("value", "INT", [1])], [40]),
                   node(2, "mid", [inp("a", "INT", 1)], [out("o", "INT", [2])], []),
                   node(3, "Text", [inp("value", "*", 2)], [], ["n"])],
                  [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"]], definitions={"subgraphs": [leaf, mid]})
    api = convert(wf, reg)
    assert "2:4:1" in api and api["3"]["inputs"]["value"] == ["2:4:1", 0]
    assert Executor(reg).execute(api).outputs["3"] == {"text": ["n:41"]}


def test_legacy_group_nodes(reg):
    group = {"nodes": [{"index": 0, "type": "Number", "inputs": [], "outputs": [out("value", "INT")],
                        "widgets_values": [1]},
                       {"index": 1, "type": "Add", "inputs": [inp("a", "INT")], "outputs": [out("INT", "INT")],
                        "widgets_values": [1]}],
             "links": [[0, 0, 1, 0, 0, "INT"]], "external": []}
    wf = workflow([node(1, "workflow>Pair", [], [out("value", "INT"), out("INT", "INT", [1])], [20, 2]),
                   node(2, "Text", [inp("value", "*", 1)], [], ["g"])],
                  [[1, 1, 1, 2, 0, "INT"]], extra={"groupNodes": {"Pair": group}})
    api = convert(wf, reg)
    assert api["1:0"]["inputs"] == {"value": 20} and api["1:1"]["inputs"] == {"b": 2, "a": ["1:0", 0]}
    assert Executor(reg).execute(api).outputs["2"] == {"text": ["g:22"]}


def test_list_widget_values_are_wrapped(reg):
    wf = workflow([node(1, "Text", [], [], [["a", "b"]])], [])
    assert convert(wf, reg)["1"]["inputs"]["text"] == {"__value__": ["a", "b"]}


@pytest.mark.parametrize("wf, needle", [
    (workflow([node(3, "Mystery", [], [], [], title="My mystery")], []),
     'node 3 (Mystery, titled "My mystery"): unknown node type'),
    (workflow([node(4, "Seeded", [], [], [1], title="Sampler")], []), 'node 4 (Seeded, titled "Sampler"): '
                                                                      "widgets_values has too few values"),
    (workflow([node(5, "Number", [], [], [1, 2, 3])], []), "node 5 (Number): widgets_values has 2 more value(s)"),
    ({"nodes": "x"}, "not a UI workflow"),
    (workflow([{"id": 1}], []), "malformed node"),
    (workflow([], [["x"]]), "malformed link"),
])
def test_conversion_errors_name_the_node(reg, wf, needle):
    with pytest.raises(UIConversionError) as info:
        convert(wf, reg)
    assert needle in str(info.value)


def test_every_unknown_node_type_is_listed_with_its_hint(reg):
    reg.add_missing_node_hints({"UltimateSDUpscale*": "comes from ComfyUI_UltimateSDUpscale"})
    wf = workflow([node(1, "Mystery"), node(2, "Text", [], [], ["x"]), node(3, "UltimateSDUpscale", title="Upscale"),
                   node(4, "Other")], [])
    with pytest.raises(UIConversionError) as info:
        convert(wf, reg)
    assert [(m.node_id, m.class_type, m.hint) for m in info.value.missing] == [
        ("1", "Mystery", None), ("3", "UltimateSDUpscale", "comes from ComfyUI_UltimateSDUpscale"), ("4", "Other", None)]
    assert str(info.value).splitlines() == [
        "3 node(s) of unknown type:", "  node 1 (Mystery): unknown node type",
        '  node 3 (UltimateSDUpscale, titled "Upscale"): comes from ComfyUI_UltimateSDUpscale',
        "  node 4 (Other): unknown node type"]


def test_cli_runs_ui_workflows(reg, tmp_path, monkeypatch, capsys):
    import json
    from graphengine.cli import main
    monkeypatch.setenv("GRAPHENGINE_NODE_PACKS", "graphengine.examples:register")
    wf = workflow([node(1, "Number", [], [out("value", "INT", [1])], [3]),
                   node(2, "ShowValue", [inp("value", "*", 1)], [], [])], [[1, 1, 0, 2, 0, "INT"]])
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(wf))
    assert main(["run", str(path), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["outputs"] == {"2": {"text": ["3"]}}
