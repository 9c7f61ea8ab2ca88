"""API → UI workflow drawing: every bundled workflow survives the round trip through the editor's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphengine import RuntimeConfig, build_registry
from graphengine.ui_build import UIBuildError, api_to_ui
from graphengine.ui_convert import convert

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def registry():
    return build_registry(RuntimeConfig(base_dir=REPO))


def stripped(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_round_trip_through_the_ui_format(path, registry):
    prompt = json.loads(path.read_text())
    ui = api_to_ui(prompt, registry)
    assert ui["version"] == 0.4 and len(ui["nodes"]) == len(prompt)
    for link in ui["links"]:  # every link is listed on both of its ends
        source = next(n for n in ui["nodes"] if n["id"] == link[1])
        target = next(n for n in ui["nodes"] if n["id"] == link[3])
        assert link[0] in source["outputs"][link[2]]["links"] and target["inputs"][link[4]]["link"] == link[0]
    assert stripped(convert(ui, registry)) == stripped(prompt)


def test_seed_widgets_carry_the_control_slot_and_columns_follow_the_links(registry):
    prompt = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    ui = api_to_ui(prompt, registry)
    sampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    assert sampler["widgets_values"][1] == "fixed"
    loader = next(n for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple")
    assert loader["pos"][0] < sampler["pos"][0]


def test_unknown_types_and_dangling_links_are_refused(registry):
    with pytest.raises(UIBuildError, match="unknown node type"):
        api_to_ui({"1": {"class_type": "NoSuchNode", "inputs": {}}}, registry)
    with pytest.raises(UIBuildError, match="missing node"):
        api_to_ui({"1": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["9", 2]}}}, registry)


def test_editor_templates_are_current_and_valid_on_a_fresh_clone(registry):
    """The committed template graphs are what the tool writes, and each converts to a prompt that validates against
    the bundled models and sample inputs."""
    from graphengine.validation import validate_prompt
    from tools.make_editor_templates import CATEGORIES, OUT, index_entries

    assert json.loads((OUT / "index.json").read_text()) == index_entries()
    for _title, _icon, templates in CATEGORIES:
        for name, stem, _label, _description in templates:
            ui = json.loads((OUT / f"{name}.json").read_text())
            assert ui == json.loads(json.dumps(api_to_ui(json.loads((REPO / "workflows" / f"{stem}.json")
                                                                    .read_text()), registry)))
            validated = validate_prompt(convert(ui, registry), registry)
            assert not validated.node_errors, name
