"""Every template builds a graph that validates against the full registry; template-specific wiring; the
`graphengine template` command."""

from __future__ import annotations

import json

import pytest

from graphengine import validate_prompt
from graphengine.cli import main
from graphengine.script import load_templates
from tools.generate_workflows import WORKFLOWS
from workflows.templates import TEMPLATES, area_composition, hires_fix_model, inpaint_model, variations

PROMPT = "a red circle on the left on a blue background"


def by_class(prompt: dict, class_type: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == class_type]


@pytest.mark.parametrize("stem", sorted(WORKFLOWS))
def test_every_template_graph_validates_against_the_full_registry(stem, sd_registry):
    name, params = WORKFLOWS[stem]
    prompt = TEMPLATES[name](registry=sd_registry, **params).to_api()
    validated = validate_prompt(prompt, sd_registry)
    assert not validated.node_errors
    assert set(validated.nodes) == set(prompt)  # every node feeds an output
    assert by_class(prompt, "SaveImage")


def test_template_table_covers_the_required_templates():
    assert set(TEMPLATES) == {"txt2img", "img2img", "inpaint", "inpaint_model", "outpaint", "depth2img",
                              "hires_fix", "hires_fix_model", "variations", "area_composition", "lora",
                              "clipseg_inpaint", "controlnet", "unconditional"}


def test_inpaint_model_methods_use_the_two_inpaint_nodes(schema_registry):
    encode = inpaint_model(PROMPT, registry=schema_registry).to_api()
    conditioning = inpaint_model(PROMPT, method="conditioning", registry=schema_registry).to_api()
    assert by_class(encode, "VAEEncodeForInpaint") and not by_class(encode, "InpaintModelConditioning")
    (prepared_id,) = [k for k, v in conditioning.items() if v["class_type"] == "InpaintModelConditioning"]
    (sampler,) = by_class(conditioning, "KSampler")
    assert [sampler["inputs"][k] for k in ("positive", "negative", "latent_image")] == \
        [[prepared_id, 0], [prepared_id, 1], [prepared_id, 2]]


def test_variations_by_seed_makes_one_sampler_per_seed(schema_registry):
    prompt = variations(PROMPT, count=3, mode="seeds", seed=10, registry=schema_registry).to_api()
    assert [s["inputs"]["seed"] for s in by_class(prompt, "KSampler")] == [10, 11, 12]
    assert len(by_class(prompt, "SaveImage")) == 3
    batch = variations(PROMPT, count=5, registry=schema_registry).to_api()
    assert [n["inputs"]["batch_size"] for n in by_class(batch, "EmptyLatentImage")] == [5]


def test_hires_fix_model_upscales_decoded_pixels_and_can_resize_them(schema_registry):
    plain = hires_fix_model(PROMPT, registry=schema_registry).to_api()
    (upscale,) = by_class(plain, "ImageUpscaleWithModel")
    (loader,) = by_class(plain, "UpscaleModelLoader")
    assert loader["inputs"]["model_name"] == "RealESRGAN_x2plus.pth"
    assert plain[upscale["inputs"]["image"][0]]["class_type"] == "VAEDecode"
    assert not by_class(plain, "ImageScaleToTotalPixels") and len(by_class(plain, "KSampler")) == 2
    resized = hires_fix_model(PROMPT, megapixels=0.05, registry=schema_registry).to_api()
    (scale,) = by_class(resized, "ImageScaleToTotalPixels")
    assert scale["inputs"]["megapixels"] == 0.05
    (encode,) = by_class(resized, "VAEEncode")
    assert resized[encode["inputs"]["pixels"][0]]["class_type"] == "ImageScaleToTotalPixels"


def test_area_composition_gives_each_region_a_column(schema_registry):
    prompt = area_composition(PROMPT, ["left thing", "middle thing", "right thing"], width=192,
                              registry=schema_registry).to_api()
    areas = [(a["inputs"]["x"], a["inputs"]["width"]) for a in by_class(prompt, "ConditioningSetArea")]
    assert areas == [(0, 64), (64, 64), (128, 64)]
    assert len(by_class(prompt, "ConditioningCombine")) == 3
    with pytest.raises(ValueError, match="make width at least 192"):
        area_composition(PROMPT, ["a", "b", "c"], width=128, registry=schema_registry)


def test_builder_errors_surface_from_templates(schema_registry):
    with pytest.raises(ValueError, match=r"KSampler \(node \d+\): input 'sampler_name': Value not in list"):
        TEMPLATES["txt2img"](PROMPT, sampler="no_such_sampler", registry=schema_registry)


def test_cli_template_json_prints_the_template_graph(templates_installed, schema_registry, capsys, tmp_path):
    code = main(["template", "txt2img", "--prompt", PROMPT, "--steps", "7", "--cfg", "3.5", "--batch-size", "2",
                 "--json", "--base-dir", str(tmp_path)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    expected = TEMPLATES["txt2img"](PROMPT, steps=7, cfg=3.5, batch_size=2, registry=schema_registry).to_api()
    assert printed == expected


def test_cli_template_parses_choices_and_lists(templates_installed, schema_registry, capsys, tmp_path):
    code = main(["template", "area_composition", "--prompt", PROMPT, "--regions", "one", "two", "--json",
                 "--base-dir", str(tmp_path)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [n["inputs"]["text"] for n in by_class(printed, "CLIPTextEncode")] == [PROMPT, "", "one", "two"]
    code = main(["template", "inpaint_model", "--prompt", PROMPT, "--method", "conditioning", "--json",
                 "--base-dir", str(tmp_path)])
    assert code == 0 and by_class(json.loads(capsys.readouterr().out), "InpaintModelConditioning")


def test_cli_template_help_lists_the_parameters(templates_installed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["template", "hires_fix", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--prompt", "--scale-by", "--hires-denoise", "--upscale-method", "--filename-prefix"):
        assert option in out
    assert "float (default: 0.5)" in out and "str (required)" in out


def test_cli_template_lists_templates_and_rejects_bad_input(templates_installed, capsys, tmp_path):
    assert main(["template"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in TEMPLATES)
    assert main(["template", "nope"]) == 2
    assert "unknown template 'nope'" in capsys.readouterr().err
    code = main(["template", "txt2img", "--prompt", PROMPT, "--steps", "0", "--json", "--base-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "input 'steps': Value 0 smaller than min of 1" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["template", "txt2img", "--json"])  # --prompt is required
    assert exit_info.value.code == 2


def test_templates_come_from_the_entry_point_group_or_the_override(monkeypatch):
    monkeypatch.setenv("GRAPHENGINE_TEMPLATES", "workflows.templates")  # a module: its TEMPLATES table
    assert load_templates() == TEMPLATES
    monkeypatch.setenv("GRAPHENGINE_TEMPLATES", "")
    assert load_templates() == {}


def test_file_combos_are_checked_only_when_asked(sd_registry):
    from graphengine.script import Graph
    from workflows.templates import BASE_CHECKPOINT

    Graph(sd_registry).CheckpointLoaderSimple(ckpt_name="elsewhere.safetensors")  # may exist where it runs
    strict = Graph(sd_registry, check_files=True)
    strict.CheckpointLoaderSimple(ckpt_name=BASE_CHECKPOINT)
    with pytest.raises(ValueError, match=r"CheckpointLoaderSimple \(node 2\): input 'ckpt_name': Value not in list"):
        strict.CheckpointLoaderSimple(ckpt_name="elsewhere.safetensors")
