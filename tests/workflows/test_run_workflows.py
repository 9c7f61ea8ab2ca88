"""Every committed workflow runs through the CLI with tiny checkpoints named like the demo model and writes its
PNGs; a saved PNG runs again from its embedded prompt; `graphengine convert` turns UI workflows into API prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from graphengine import validate_prompt
from graphengine.cli import main
from graphengine.ui_convert import convert
from graphengine.workflow_io import apply_overrides, load_workflow_data, png_text_chunks

from tests.upscale.spandrel_support import require_spandrel

from .conftest import INPUT_DIR, WORKFLOWS_DIR

FAST_STEPS = 2
# file stem -> (number of images written, their size); steps are cut to FAST_STEPS to keep the run short
EXPECTED_IMAGES = {
    "txt2img": (1, (64, 64)),
    "img2img": (1, (64, 64)),
    "lora": (1, (64, 64)),
    "inpaint": (1, (64, 64)),
    "inpaint_model": (1, (64, 64)),
    "clipseg_inpaint": (1, (64, 64)),
    "inpaint_model_conditioning": (1, (64, 64)),
    "outpaint": (1, (64, 64)),  # the 32-px-wide sample padded by 32 on the right
    "depth2img": (1, (64, 64)),
    "controlnet": (1, (64, 64)),
    "hires_fix": (1, (96, 96)),
    "hires_fix_model": (1, (128, 128)),  # the 2x upscale model's output, resampled
    "variations": (4, (64, 64)),
    "variations_seeds": (3, (64, 64)),
    "area_composition": (1, (128, 64)),
    "unconditional": (4, (32, 32)),
}
NEEDS_SPANDREL = {"hires_fix_model"}  # an upscale model: spandrel is an optional extra (installed in CI)


def fast_overrides(prompt: dict) -> list[str]:
    return [f"{node_id}.steps={FAST_STEPS}" for node_id, node in prompt.items()
            if node["class_type"] in ("KSampler", "DiffusersSchedulerSampler")]


def dirs(models_dir: Path, out: Path) -> list[str]:
    return ["--models-dir", str(models_dir), "--input-dir", str(INPUT_DIR), "--output-dir", str(out),
            "--base-dir", str(out.parent), "--quiet"]


def run_cli(args: list[str], capsys) -> tuple[int, list[Path], str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, [Path(line) for line in captured.out.splitlines() if line.endswith(".png")], captured.err


def test_every_workflow_file_has_an_expectation():
    assert {p.stem for p in WORKFLOWS_DIR.glob("*.json")} == set(EXPECTED_IMAGES)


@pytest.mark.parametrize("stem", sorted(EXPECTED_IMAGES))
def test_workflow_file_runs_through_the_cli_and_writes_pngs(stem, models_dir, tmp_path, capsys):
    if stem in NEEDS_SPANDREL:
        require_spandrel()
    path = WORKFLOWS_DIR / f"{stem}.json"
    prompt = json.loads(path.read_text())
    overrides = [arg for o in fast_overrides(prompt) for arg in ("--set", o)]
    code, files, err = run_cli(["run", str(path), *overrides, *dirs(models_dir, tmp_path / "output")], capsys)
    assert code == 0, err
    count, size = EXPECTED_IMAGES[stem]
    assert len(files) == count
    for file in files:
        assert file.is_file() and file.parent.is_relative_to(tmp_path / "output")
        with Image.open(file) as image:
            assert image.size == size and image.mode == "RGB"


def test_saved_png_runs_again_from_its_prompt_chunk(models_dir, sd_registry, tmp_path, capsys):
    path = WORKFLOWS_DIR / "txt2img.json"
    prompt = json.loads(path.read_text())
    overrides = fast_overrides(prompt)
    sets = [arg for o in overrides for arg in ("--set", o)]
    code, (saved,), err = run_cli(["run", str(path), *sets, *dirs(models_dir, tmp_path / "output")], capsys)
    assert code == 0, err
    expected = validate_prompt(apply_overrides(prompt, overrides), sd_registry).api_prompt()
    embedded, _ = load_workflow_data(saved)
    assert embedded == expected

    code, (again,), err = run_cli(["run", str(saved), *dirs(models_dir, tmp_path / "output")], capsys)
    assert code == 0, err
    assert again != saved
    assert json.loads(png_text_chunks(again.read_bytes())["prompt"]) == expected
    with Image.open(saved) as first, Image.open(again) as second:
        assert first.tobytes() == second.tobytes()  # same graph, same seed: the same image


def ui_workflow() -> dict:
    """A small editor-format workflow: Number -> Add -> ShowValue (pure-Python example nodes)."""
    def node(node_id, kind, widgets, inputs=(), outputs=()):
        return {"id": node_id, "type": kind, "mode": 0, "widgets_values": widgets, "inputs": list(inputs),
                "outputs": list(outputs)}
    return {
        "last_node_id": 3, "last_link_id": 2, "version": 0.4,
        "nodes": [
            node(1, "Number", [5], outputs=[{"name": "value", "type": "INT", "links": [1]}]),
            node(2, "Add", [7], inputs=[{"name": "a", "type": "INT", "link": 1}],
                 outputs=[{"name": "INT", "type": "INT", "links": [2]}]),
            node(3, "ShowValue", [], inputs=[{"name": "value", "type": "*", "link": 2}]),
        ],
        "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"]],
    }


@pytest.fixture
def example_nodes(monkeypatch):
    monkeypatch.setenv("GRAPHENGINE_NODE_PACKS", "graphengine.examples:register")
    from graphengine import RuntimeConfig, build_registry
    return build_registry(RuntimeConfig())


def test_convert_prints_the_api_prompt(example_nodes, tmp_path, capsys):
    source = tmp_path / "ui.json"
    source.write_text(json.dumps(ui_workflow()))
    assert main(["convert", str(source), "--base-dir", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == convert(ui_workflow(), example_nodes)
    assert printed["2"] == {"inputs": {"b": 7, "a": ["1", 0]}, "class_type": "Add", "_meta": {"title": "Add"}}
    target = tmp_path / "api.json"
    assert main(["convert", str(source), "-o", str(target), "--base-dir", str(tmp_path)]) == 0
    assert json.loads(target.read_text()) == printed
    assert main(["convert", str(target), "--base-dir", str(tmp_path)]) == 0  # API input passes through
    assert json.loads(capsys.readouterr().out) == printed


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "invalid JSON"),
    ('{"nodes": [{"id": 1, "type": "Nope", "widgets_values": []}], "links": []}', "node 1 (Nope): unknown node type"),
    ("[1, 2]", "neither a UI-format workflow nor an API-format prompt"),
])
def test_convert_errors_exit_2_with_one_line(example_nodes, tmp_path, capsys, content, message):
    """One line per problem: a single error line, or a header plus one line per unknown node type."""
    source = tmp_path / "in.json"
    if content is not None:
        source.write_text(content)
    assert main(["convert", str(source), "--base-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = 2 if "unknown node type" in message else 1
    assert captured.out == "" and captured.err.count("\n") == lines and message in captured.err


def test_cli_template_runs_like_graphengine_run(templates_installed, models_dir, tmp_path, capsys):
    args = ["template", "variations", "--prompt", "a small purple square at the top on a yellow background",
            "--count", "2", "--mode", "seeds", "--steps", str(FAST_STEPS), "--filename-prefix", "cli/var"]
    code, files, err = run_cli([*args, *dirs(models_dir, tmp_path / "output")], capsys)
    assert code == 0, err
    assert sorted(f.name for f in files) == ["var_seed0_00001_.png", "var_seed1_00001_.png"]
    assert all(f.parent == tmp_path / "output" / "cli" for f in files)


def test_template_graph_runs_in_process(sd_registry):
    from workflows.templates import img2img

    graph = img2img("a large yellow circle in the center on a blue background", steps=FAST_STEPS, denoise=0.5,
                    registry=sd_registry)
    result = graph.run()
    assert result.ok, result.error
    (save_id,) = [k for k, v in graph.to_api().items() if v["class_type"] == "SaveImage"]
    (image,) = result.outputs[save_id]["images"]
    assert image["filename"].startswith("img2img_") and image["type"] == "output"
