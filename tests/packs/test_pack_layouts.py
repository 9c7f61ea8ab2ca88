"""Pack layouts seen in published packs: submodules that import each other relatively, absolute imports through
`custom_nodes.<pack>`, and `import execution` (ComfyUI's executor module, imported by packs that patch it)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from graphengine import Executor, RuntimeConfig
from graphengine.runtime import build_registry

FILES = {
    "__init__.py": "from .lib.nodes import NODE_CLASS_MAPPINGS\n",
    "lib/__init__.py": "",
    "lib/ops.py": "def double(value):\n    return 2 * value\n",
    "lib/nodes.py": """
        import execution  # ComfyUI's executor module: imported, never used here
        from .ops import double
        from custom_nodes.layout_pack.lib import ops as absolute_ops


        class DoubleTwice:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}

            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            OUTPUT_NODE = True
            CATEGORY = "test"

            def run(self, value):
                result = absolute_ops.double(double(value))
                return {"ui": {"value": [result]}, "result": (result,)}


        NODE_CLASS_MAPPINGS = {"DoubleTwice": DoubleTwice}
        """,
}


@pytest.fixture
def layout_registry(tmp_path):
    packs = tmp_path / "custom_nodes"
    for name, text in FILES.items():
        path = packs / "layout_pack" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    yield build_registry(RuntimeConfig(base_dir=tmp_path / "base", custom_nodes_dirs=[packs]))
    for name in [n for n in sys.modules if n.startswith("custom_nodes.layout_pack")]:
        del sys.modules[name]


def test_a_pack_whose_submodules_import_each_other_loads_and_runs(layout_registry):
    record = next(r for r in layout_registry.packs if r.name == "layout_pack")
    assert record.error is None and record.nodes == ["DoubleTwice"]
    assert sys.modules["custom_nodes"].layout_pack is sys.modules["custom_nodes.layout_pack"]
    result = Executor(layout_registry).execute({"1": {"class_type": "DoubleTwice", "inputs": {"value": 5}}})
    assert result.ok and result.outputs["1"] == {"value": [20]}


def test_execution_module_is_a_name_whose_attributes_say_they_are_not_provided(layout_registry):
    execution = sys.modules["execution"]
    with pytest.raises(AttributeError, match="'PromptExecutor': graphengine's ComfyUI compatibility layer does not"):
        execution.PromptExecutor  # noqa: B018
