"""Loading custom node packs: isolation, the import summary, requirements, import shims, the default folder,
`graphengine doctor` and `graphengine run`."""

from __future__ import annotations

import json
import sys
import types

from graphengine import NodeRegistry, RuntimeConfig
from graphengine.cli import main
from graphengine.doctor import format_report, gather_report
from graphengine.runtime import build_registry

from .conftest import pack_registry


def test_every_pack_loads_on_its_own_and_the_broken_one_is_reported(registry):
    records = {r.name: r for r in registry.packs}
    assert set(records) == {"broken_pack", "v1_basic", "v1_flow", "v3_pack", "web_pack"}
    broken = records["broken_pack"]
    assert not broken.loaded and broken.error == ("ModuleNotFoundError: No module named "
                                                  "'graphengine_test_missing_dependency'")
    assert "broken_pack/__init__.py" in broken.traceback
    assert [e.path for e in registry.pack_errors] == [broken.path]
    assert records["v1_basic"].nodes == ["ImageBrightness", "SolidImage", "DescribeNode"]
    assert records["v3_pack"].nodes == ["PosterizeV3", "MaybeBlockV3", "PickLazyV3", "PreviewBothV3"]
    assert all(r.seconds >= 0 for r in records.values())
    summary = registry.pack_summary().splitlines()
    assert summary[0] == "Import times for custom nodes:"
    assert any(line.endswith(f"seconds (IMPORT FAILED): {broken.path}") for line in summary)
    assert any(line.endswith(f"seconds: {records['v3_pack'].path}") for line in summary)
    assert f"Cannot import {broken.path}: {broken.error}" in summary


def test_requirements_are_reported_never_installed(registry):
    basic = next(r for r in registry.packs if r.name == "v1_basic")
    assert basic.requirements == ["numpy>=1.20", "definitely-not-installed-graphengine-dep==1.0"]
    assert basic.missing_requirements == ["definitely-not-installed-graphengine-dep"]
    assert ("v1_basic: requirements.txt lists packages that are not installed (not installed automatically): "
            "definitely-not-installed-graphengine-dep") in registry.pack_summary()


def test_a_bad_node_class_is_skipped_and_existing_names_are_kept(tmp_path, packs_copy):
    (packs_copy / "partly_bad.py").write_text(
        "class NoFunction:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n        return {'required': {}}\n"
        "    RETURN_TYPES = ()\n\n"
        "class Fine:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n        return {'required': {}}\n"
        "    RETURN_TYPES = ('INT',)\n    FUNCTION = 'run'\n"
        "    def run(self):\n        return (7,)\n\n"
        "NODE_CLASS_MAPPINGS = {'NoFunction': NoFunction, 'PartlyFine': Fine, 'EmptyImage': Fine}\n")
    (packs_copy / "exits.py").write_text("import sys\nsys.exit('this pack exits at import')\n")
    registry = pack_registry(tmp_path, packs_copy)
    exits = next(r for r in registry.packs if r.name == "exits")
    assert exits.error == "SystemExit: this pack exits at import"  # recorded; the packs after it still load
    record = next(r for r in registry.packs if r.name == "partly_bad")
    assert record.loaded and record.nodes == ["PartlyFine"]
    assert record.node_errors == ["NoFunction: NodeDefinitionError: NoFunction: a ComfyUI node class needs FUNCTION",
                                  "EmptyImage: a node of that name exists already; kept the existing one"]
    assert registry.node_info("EmptyImage")["python_module"] == "nodes"
    assert "partly_bad: skipped node NoFunction" in registry.pack_summary()


def test_import_shims_go_in_parents_first_and_never_replace_a_module(tmp_path):
    made: list[str] = []

    def factory(name: str, **attributes):
        def make() -> types.ModuleType:
            made.append(name)
            module = types.ModuleType(name)
            module.__path__ = []
            module.__dict__.update(attributes)
            return module
        return make

    registry = NodeRegistry()
    registry.add_import_shim("ge_shim_test.utils", factory("ge_shim_test.utils", VALUE=41))
    registry.add_import_shim("ge_shim_test", factory("ge_shim_test"))
    registry.add_import_shim("json", factory("json"))  # present already: left alone
    packs = tmp_path / "packs"
    packs.mkdir()
    (packs / "uses_shim.py").write_text(
        "import ge_shim_test\nfrom ge_shim_test.utils import VALUE\n\n"
        "class Answer:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n        return {'required': {}}\n"
        "    RETURN_TYPES = ('INT',)\n    FUNCTION = 'run'\n    OUTPUT_NODE = True\n"
        "    def run(self):\n        return {'ui': {'value': [VALUE + 1]}, 'result': (VALUE + 1,)}\n\n"
        "NODE_CLASS_MAPPINGS = {'ShimAnswer': Answer}\n")
    try:
        assert registry.load_folder(packs) == ["uses_shim"], registry.pack_summary()
        assert made == ["ge_shim_test", "ge_shim_test.utils"]
        assert sys.modules["ge_shim_test"].utils is sys.modules["ge_shim_test.utils"]
        from graphengine import Executor
        result = Executor(registry).execute({"1": {"class_type": "ShimAnswer", "inputs": {}}})
        assert result.outputs["1"] == {"value": [42]}
    finally:
        sys.modules.pop("ge_shim_test", None)
        sys.modules.pop("ge_shim_test.utils", None)


def test_custom_nodes_beside_models_load_by_default_and_doctor_lists_them(tmp_path, packs_copy, monkeypatch):
    monkeypatch.setenv("GRAPHENGINE_NODE_PACKS", "")  # no core pack: only the custom nodes
    registry = build_registry(RuntimeConfig(base_dir=tmp_path))
    assert {r.name for r in registry.packs} == {"broken_pack", "v1_basic", "v1_flow", "v3_pack", "web_pack"}
    assert "PosterizeV3" in registry
    again = build_registry(RuntimeConfig(base_dir=tmp_path, custom_nodes_dirs=[packs_copy]))
    assert len(again.packs) == 5  # the same folder named twice loads once
    report = gather_report(RuntimeConfig(base_dir=tmp_path))
    assert report["custom_nodes_dirs"] == [str(packs_copy)]
    packs = {p["name"]: p for p in report["custom_packs"]}
    assert packs["v1_basic"]["nodes"] == 3 and packs["v1_basic"]["requirements_not_installed"] == [
        "definitely-not-installed-graphengine-dep"]
    assert packs["web_pack"]["web_directory"] == str((packs_copy / "web_pack" / "web").resolve())
    text = format_report(report)
    assert "  broken_pack: IMPORT FAILED: ModuleNotFoundError" in text
    assert "  v3_pack: 4 nodes (" in text


def test_run_prints_the_import_summary_and_runs_pack_nodes(tmp_path, packs_copy, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHENGINE_NODE_PACKS", "")
    prompt = {"1": {"class_type": "SolidImage", "inputs": {"width": 2, "height": 2, "value": 0.25}},
              "2": {"class_type": "ScaleRepeatedly", "inputs": {"image": ["1", 0], "factor": 2.0, "times": 2}},
              "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}}}
    workflow = tmp_path / "prompt.json"
    workflow.write_text(json.dumps(prompt))
    code = main(["run", str(workflow), "--base-dir", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Import times for custom nodes:" in captured.err
    assert f"(IMPORT FAILED): {packs_copy / 'broken_pack'}" in captured.err
    report = json.loads(captured.out)
    assert report["outputs"] == {"3": {"text": ["1.0000"]}}
    assert report["executed"] == ["1", "2.0.0.1", "2.0.0.2", "2", "3"]


def test_node_typing_helpers_come_with_a_comfy_package(tmp_path):
    packs = tmp_path / "packs"
    packs.mkdir()
    (packs / "typed.py").write_text(
        "from comfy.comfy_types import IO, ComfyNodeABC\n\n"
        "class Typed(ComfyNodeABC):\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n        return {'required': {'image': (IO.IMAGE,), 'x': (IO.ANY, {})}}\n"
        "    RETURN_TYPES = (IO.IMAGE,)\n    FUNCTION = 'run'\n"
        "    def run(self, image, x):\n        return (image,)\n\n"
        "NODE_CLASS_MAPPINGS = {'TypedNode': Typed}\n")
    names = ("comfy", "comfy.comfy_types", "comfy.comfy_types.node_typing")
    before = {name: sys.modules.pop(name) for name in names if name in sys.modules}  # a compat layer's, if any
    without = NodeRegistry()
    assert without.load_folder(packs) == []  # no `comfy` package here: comfy.comfy_types is not installed alone
    assert "comfy.comfy_types" not in sys.modules
    registry = NodeRegistry()
    registry.add_import_shim("comfy", lambda: types.ModuleType("comfy"))
    try:
        assert registry.load_folder(packs) == ["typed"], registry.pack_summary()
        info = registry.node_info("TypedNode")
        assert info["input"]["required"] == {"image": ["IMAGE"], "x": ["*", {}]} and info["output"] == ["IMAGE"]
        assert sys.modules["comfy"].comfy_types is sys.modules["comfy.comfy_types"]
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(before)
