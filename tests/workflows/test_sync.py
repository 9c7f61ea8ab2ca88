"""The committed workflow JSON files and sample inputs equal what their generators produce."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tools.generate_workflows import generate, render, stale_files
from tools.make_workflow_inputs import sample_inputs

from .conftest import INPUT_DIR, WORKFLOWS_DIR


def test_workflow_files_equal_the_generator_output(schema_registry):
    generated = generate(schema_registry)
    committed = {p.stem: p.read_text(encoding="utf-8") for p in WORKFLOWS_DIR.glob("*.json")}
    assert set(committed) == set(generated), "run: python tools/generate_workflows.py"
    for stem, prompt in generated.items():
        assert committed[stem] == render(prompt), f"workflows/{stem}.json is stale: run tools/generate_workflows.py"
    assert stale_files(WORKFLOWS_DIR, schema_registry) == []


def test_stale_check_notices_an_edited_file(schema_registry, tmp_path):
    for stem, prompt in generate(schema_registry).items():
        (tmp_path / f"{stem}.json").write_text(render(prompt), encoding="utf-8")
    edited = json.loads((tmp_path / "txt2img.json").read_text())
    edited["1"]["inputs"]["ckpt_name"] = "other.safetensors"
    (tmp_path / "txt2img.json").write_text(render(edited), encoding="utf-8")
    (tmp_path / "extra.json").write_text("{}")
    assert stale_files(tmp_path, schema_registry) == ["extra.json", "txt2img.json"]


def test_sample_inputs_equal_the_generator_output():
    for name, image in sample_inputs().items():
        committed = Image.open(INPUT_DIR / name)
        assert committed.size == image.size and committed.mode == image.mode, name
        assert np.array_equal(np.asarray(committed), np.asarray(image)), f"input/{name} is stale"
