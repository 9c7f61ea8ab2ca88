import json
from typing import Annotated, Any

import pytest

from graphengine import Combo, Float, Int, Node, NodeDefinitionError, NodeRegistry, Output, Socket, String
from graphengine.examples import EXAMPLE_NODES


class Sampler(Node):
    """Sample things."""

    CATEGORY = "sampling"
    HIDDEN = {"prompt": "PROMPT"}
    RETURNS = (Output("LATENT"), Output("IMAGE", name="preview", tooltip="a preview"))
    seed: Annotated[int, Int(min=0, max=2**64 - 1, control_after_generate=True)] = 0
    width: Annotated[int, Int(min=16, max=64, step=8)] = 16
    cfg: Annotated[float, Float(min=0.0, max=100.0, step=0.1, round=0.01)] = 8.0
    sampler_name: Annotated[str, Combo(["euler", "heun"])] = "euler"
    ckpt: Annotated[str, Combo(lambda services: sorted(services["files"]))] = None
    text: Annotated[str, String(multiline=True, dynamic_prompts=True)] = ""
    model: Annotated[Any, Socket("MODEL", tooltip="the model")]
    mask: Annotated[Any, Socket("MASK", optional=True)] = None


def test_object_info_has_every_comfyui_field():
    reg = NodeRegistry(services={"files": ["b.safetensors", "a.safetensors"]})
    reg.register(Sampler, python_module="nodes")
    info = reg.object_info()["Sampler"]
    assert set(info) >= {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
                         "description", "python_module", "category", "output_node"}
    # an INT sends `step` only when declared (ComfyUI's seed has none, EmptyLatentImage's width has 8)
    assert info["input"]["required"]["seed"] == ["INT", {"default": 0, "min": 0, "max": 2**64 - 1,
                                                         "control_after_generate": True}]
    assert info["input"]["required"]["width"] == ["INT", {"default": 16, "min": 16, "max": 64, "step": 8}]
    assert info["input"]["required"]["cfg"] == ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                                          "round": 0.01}]
    assert info["input"]["required"]["sampler_name"] == [["euler", "heun"], {"default": "euler"}]
    assert info["input"]["required"]["ckpt"] == [["a.safetensors", "b.safetensors"]]
    assert info["input"]["required"]["text"] == ["STRING", {"default": "", "multiline": True, "dynamicPrompts": True}]
    assert info["input"]["required"]["model"] == ["MODEL", {"tooltip": "the model"}]  # link inputs keep tooltips
    assert info["input"]["optional"] == {"mask": ["MASK"]}
    assert info["input"]["hidden"] == {"prompt": "PROMPT"}
    assert info["input_order"] == {"required": ["seed", "width", "cfg", "sampler_name", "ckpt", "text", "model"],
                                   "optional": ["mask"], "hidden": ["prompt"]}
    assert info["output"] == ["LATENT", "IMAGE"]
    assert info["output_name"] == ["LATENT", "preview"]
    assert info["output_is_list"] == [False, False]
    assert info["output_tooltips"] == ["", "a preview"]
    assert info["description"] == "Sample things."
    assert (info["name"], info["display_name"], info["category"], info["python_module"], info["output_node"]) == \
        ("Sampler", "Sampler", "sampling", "nodes", False)
    json.dumps(info)  # the whole thing is JSON


def test_computed_combo_follows_services():
    services = {"files": ["one.safetensors"]}
    reg = NodeRegistry(services=services)
    reg.register(Sampler)
    assert reg.node_info("Sampler")["input"]["required"]["ckpt"][0] == ["one.safetensors"]
    services["files"].append("two.safetensors")
    assert reg.node_info("Sampler")["input"]["required"]["ckpt"][0] == ["one.safetensors", "two.safetensors"]


def test_list_flags_and_output_node(registry):
    info = registry.object_info()
    assert info["Range"]["output_is_list"] == [True]
    assert info["Sum"]["is_input_list"] is True
    assert info["ShowValue"]["output_node"] is True and info["ShowValue"]["output"] == []
    assert info["Switch"]["input"]["required"]["on_true"] == ["*", {"lazy": True}]


def test_bad_node_definitions_are_rejected_at_registration():
    class NoSpec(Node):
        RETURNS = ()
        thing: object

    class BadReturns(Node):
        RETURNS = ("INT",)

    with pytest.raises(NodeDefinitionError):
        NodeRegistry().register(NoSpec)
    with pytest.raises(NodeDefinitionError):
        NodeRegistry().register(BadReturns)
    with pytest.raises(NodeDefinitionError):
        NodeRegistry().register(dict)


def test_custom_node_folder(tmp_path):
    (tmp_path / "good_pack.py").write_text(
        "from typing import Annotated\n"
        "from graphengine import Node, Output, Int\n"
        "class Triple(Node):\n"
        "    '''Multiply by three.'''\n"
        "    RETURNS = (Output('INT'),)\n"
        "    x: Annotated[int, Int()] = 1\n"
        "    def execute(self, ctx):\n"
        "        return (self.x * 3,)\n"
        "NODE_CLASSES = [Triple]\n")
    pkg = tmp_path / "pkg_pack"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .impl import register\n")
    (pkg / "impl.py").write_text(
        "from graphengine.examples import Number\n"
        "class Renamed(Number):\n"
        "    NAME = 'PackNumber'\n"
        "def register(registry):\n"
        "    registry.register(Renamed, python_module='custom_nodes.pkg_pack')\n")
    (tmp_path / "broken_pack.py").write_text("raise ImportError('missing dependency xyz')\n")
    (tmp_path / "notes.txt").write_text("not a pack")
    reg = NodeRegistry()
    loaded = reg.load_folder(tmp_path)
    assert loaded == ["good_pack", "pkg_pack"]
    assert "Triple" in reg and "PackNumber" in reg
    assert reg.node_info("Triple")["python_module"] == "custom_nodes.good_pack"
    assert len(reg.pack_errors) == 1 and "missing dependency xyz" in reg.pack_errors[0].message


def test_every_example_node_registers(registry):
    assert set(registry.names()) == {cls.__name__ for cls in EXAMPLE_NODES}
