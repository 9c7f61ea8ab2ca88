"""The smaller modules: how shims are installed, `comfy.samplers` names, `comfy.sd` handle classes, `node_helpers`,
`latent_preview` callbacks reporting the running node's progress."""

from __future__ import annotations

import importlib
import io
import sys
import types

import torch
from PIL import Image, ImageFile

from graphengine import NodeRegistry, Progress
from nodes.samplers.names import SAMPLER_NAMES, SCHEDULER_NAMES


def test_install_puts_parents_first_and_keeps_present_modules():
    registry = NodeRegistry()
    made = []

    def factory(name):
        def build():
            made.append(name)
            return types.ModuleType(name)
        return build

    registry.add_import_shim("ge_test_pkg.child", factory("ge_test_pkg.child"))
    registry.add_import_shim("ge_test_pkg", factory("ge_test_pkg"))
    registry.add_import_shim("json", factory("json"))  # present: left alone
    try:
        assert registry.install_import_shims() == ["ge_test_pkg", "ge_test_pkg.child"]
        assert made == ["ge_test_pkg", "ge_test_pkg.child"]
        assert sys.modules["ge_test_pkg"].child is sys.modules["ge_test_pkg.child"]
        assert sys.modules["json"].dumps is not None
        assert registry.install_import_shims() == []
    finally:
        sys.modules.pop("ge_test_pkg.child", None)
        sys.modules.pop("ge_test_pkg", None)


def test_sampler_names_and_handle_classes(env):
    samplers = importlib.import_module("comfy.samplers")
    assert samplers.KSampler.SAMPLERS == list(SAMPLER_NAMES)
    assert samplers.KSampler.SCHEDULERS == list(SCHEDULER_NAMES)
    model, clip, vae = env.call(lambda a, b, c: (a, b, c), {"ckpt": {"class_type": "CheckpointLoaderSimple",
                                                                     "inputs": {"ckpt_name":
                                                                                "graphengine-demo.safetensors"}}},
                                a=["ckpt", 0], b=["ckpt", 1], c=["ckpt", 2])
    assert isinstance(vae, importlib.import_module("comfy.sd").VAE)
    assert isinstance(clip, importlib.import_module("comfy.sd").CLIP)
    assert isinstance(model, importlib.import_module("comfy.model_patcher").ModelPatcher)
    import comfy  # the package shim
    assert comfy.utils is sys.modules["comfy.utils"]


def test_node_helpers(env):
    helpers = importlib.import_module("node_helpers")
    cond = [[torch.zeros(1, 2, 3), {"area": [1], "strength": 1.0}]]
    out = helpers.conditioning_set_values(cond, {"strength": 0.5, "area": [2]})
    assert out[0][1] == {"area": [2], "strength": 0.5} and cond[0][1]["strength"] == 1.0
    assert helpers.conditioning_set_values(cond, {"area": [2]}, append=True)[0][1]["area"] == [1, 2]
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, "PNG")
    assert helpers.pillow(Image.open, buffer).size == (32, 32)

    def needs_truncated_loading(value):
        if not ImageFile.LOAD_TRUNCATED_IMAGES:
            raise OSError("image file is truncated")
        return value * 2

    assert helpers.pillow(needs_truncated_loading, 21) == 42 and not ImageFile.LOAD_TRUNCATED_IMAGES
    assert helpers.hasher()(b"x").hexdigest() == helpers.hasher()(b"x").hexdigest()


def test_latent_preview_callback_reports_the_nodes_progress(env):
    def pack_function(model):
        preview = importlib.import_module("latent_preview")
        seen = {}
        callback = preview.prepare_callback(model, 3, seen)
        for step in range(3):
            callback(step, torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), 3)
        return sorted(seen)

    env.events.clear()
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "graphengine-demo.safetensors"}}}
    assert env.call(pack_function, graph, a=["ckpt", 0]) == ["x0"]
    assert [(e.node, e.value, e.max) for e in env.events if isinstance(e, Progress)] == \
        [("call", 1, 3), ("call", 2, 3), ("call", 3, 3)]


def test_a_pack_in_a_custom_nodes_folder_imports_the_modules(tmp_path):
    from graphengine import Executor, RuntimeConfig, build_registry

    pack = tmp_path / "custom_nodes" / "uses_folder_paths.py"
    pack.parent.mkdir()
    pack.write_text(
        "import folder_paths\n"
        "import comfy.utils\n"
        "from graphengine import Node, NodeOutput\n\n"
        "class WhereAmI(Node):\n"
        "    '''Shows the output folder, as a pack would find it.'''\n"
        "    OUTPUT_NODE = True\n\n"
        "    def execute(self, ctx):\n"
        "        comfy.utils.ProgressBar(1).update(1)\n"
        "        return NodeOutput((), ui={'folder': [folder_paths.get_output_directory()]})\n\n"
        "NODE_CLASSES = [WhereAmI]\n")
    before = set(sys.modules)
    try:
        registry = build_registry(RuntimeConfig(base_dir=tmp_path, custom_nodes_dirs=[tmp_path / "custom_nodes"]))
        assert registry.pack_errors == [] and "WhereAmI" in registry
        result = Executor(registry).execute({"1": {"class_type": "WhereAmI", "inputs": {}}})
        assert result.ok and result.outputs["1"]["folder"] == [str(tmp_path / "output")]
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("folder_paths", "comfy", "server", "node_helpers", "latent_preview",
                                      "custom_nodes"):
                sys.modules.pop(name, None)
