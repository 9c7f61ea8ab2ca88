"""`graphengine validate` and `convert` register the nodes from nodes/node_schemas.json and never import torch; the
file is fresh (generated from the node classes), and the described registry validates and converts exactly as the
real one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest

import nodes
from graphengine import Combo, Node, NodeDefinitionError, NodeRegistry, PromptValidationError, RuntimeConfig
from graphengine import build_registry, validate_prompt
from graphengine.described import DescribedNode, describe_registry, describe_schema, register_descriptions
from graphengine.node import schema_of
from graphengine.ui_convert import convert

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
TEMPLATES = sorted((ROOT / "workflows" / "editor_templates").glob("graphengine_*.json"))
PROBE = """
import json, sys
from graphengine.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules,
                  "transformers": "transformers" in sys.modules}), file=sys.stderr)
"""


def probe(tmp_path: Path, *argv: str) -> tuple[dict, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("GRAPHENGINE_NODE_PACKS", None)
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    *err_lines, last = done.stderr.strip().splitlines()
    return json.loads(last), done.stdout, "\n".join(err_lines)


def test_validate_and_convert_never_import_torch(tmp_path):
    report, out, _ = probe(tmp_path, "validate", str(ROOT / "workflows" / "txt2img.json"), "--base-dir", str(ROOT))
    assert report == {"code": 0, "torch": False, "diffusers": False, "transformers": False}
    assert out.startswith("ok: 7 nodes")

    report, _, err = probe(tmp_path, "validate", str(ROOT / "workflows" / "txt2img.json"))  # no models here
    assert report["code"] == 2 and not report["torch"]
    assert f"looked for in {tmp_path / 'models' / 'checkpoints'}" in err

    template = ROOT / "workflows" / "editor_templates" / "graphengine_inpaint.json"
    report, out, _ = probe(tmp_path, "convert", str(template))
    assert report == {"code": 0, "torch": False, "diffusers": False, "transformers": False}
    assert {node["class_type"] for node in json.loads(out).values()} >= {"CheckpointLoaderSimple", "LoadImage",
                                                                           "KSampler", "SaveImage"}


def test_the_committed_schemas_are_fresh():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from make_node_schemas import schemas_text
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert nodes.SCHEMAS_FILE.read_text(encoding="utf-8") == schemas_text(), \
        "nodes/node_schemas.json is stale: run python tools/make_node_schemas.py"


@pytest.fixture(scope="module")
def registries() -> tuple[NodeRegistry, NodeRegistry]:
    config = {"base_dir": ROOT}
    described = build_registry(RuntimeConfig(**config, schemas_only=True))
    assert all(issubclass(described.schema(n).cls, DescribedNode) for n in described.names())
    return build_registry(RuntimeConfig(**config)), described


def test_described_object_info_is_the_real_one(registries):
    real, described = registries
    assert json.loads(json.dumps(described.object_info())) == json.loads(json.dumps(real.object_info()))


def outcome(prompt: dict, registry: NodeRegistry) -> tuple:
    try:
        validated = validate_prompt(prompt, registry)
    except PromptValidationError as refused:
        return "refused", refused.body()
    return "valid", validated.outputs, list(validated.nodes), validated.node_errors


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflows_validate_the_same(registries, path):
    real, described = registries
    prompt = json.loads(path.read_text())
    assert outcome(prompt, described) == outcome(prompt, real)


def test_invalid_workflows_get_the_same_errors(registries):
    real, described = registries
    prompt = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    by_class = {node["class_type"]: (node_id, node) for node_id, node in prompt.items()}
    by_class["KSampler"][1]["inputs"].update(steps=0, sampler_name="nope")
    by_class["CheckpointLoaderSimple"][1]["inputs"]["ckpt_name"] = "missing.safetensors"
    by_class["VAEDecode"][1]["inputs"]["vae"] = [by_class["CheckpointLoaderSimple"][0], 0]  # a MODEL into VAE
    expected = outcome(prompt, real)
    assert expected[0] == "refused" and outcome(prompt, described) == expected
    messages = json.dumps(expected[1])
    assert "missing.safetensors" in messages and "nope" in messages and "MODEL" in messages


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_ui_workflows_convert_the_same(registries, path):
    real, described = registries
    workflow = json.loads(path.read_text())
    assert convert(workflow, described) == convert(workflow, real)


def test_a_described_node_cannot_run_and_lambdas_cannot_be_described():
    class Pick(Node):
        """Picks a file."""
        name: Annotated[str, Combo(lambda services: ["a"])]

    with pytest.raises(NodeDefinitionError, match="lambda"):
        describe_schema(schema_of(Pick), "tests")

    registry = NodeRegistry()
    register_descriptions(registry, describe_registry(build_registry(RuntimeConfig(base_dir=ROOT,
                                                                                   schemas_only=True))))
    cls = registry.schema("EmptyLatentImage").cls
    with pytest.raises(RuntimeError, match="registered from its description only"):
        cls.model_construct().execute(None)
