"""tools/train_demo_lora.py end to end at toy size: trains, checkpoints, evaluates, skips a finished run, resumes
exactly, and exports a kohya-format LoRA whose every key names a real Linear of the demo UNet / text encoder;
merging (tools/lora_adapters.py) at strength 0 leaves the base weights bit for bit. Plus the corner concept's data."""

from __future__ import annotations

import copy
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

import corner_concept as concept  # noqa: E402
import lora_adapters as lora  # noqa: E402
import shapes_data as sd  # noqa: E402
import train_demo_lora as train  # noqa: E402

RANK, ALPHA = 4, 2.0
TOY_ARGS = ["--batch", "2", "--rank", str(RANK), "--alpha", str(ALPHA), "--ckpt-every", "1", "--log-every", "1",
            "--eval-concept", "2", "--eval-unrelated", "2", "--sample-steps", "3", "--threads", "1",
            "--name", "toy"]
KEY_RE = re.compile(r"^(lora_unet|lora_te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _run(out: Path, *extra: str):
    threads = torch.get_num_threads()
    try:
        return train.main(["--out", str(out), *TOY_ARGS, *extra])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_lora")
    _run(out, "--steps", "2", "--eval-every", "2")
    return out


@pytest.fixture(scope="module")
def base_model():
    return train.load_base_model(train.DEFAULT_CHECKPOINT, torch.device("cpu"))


def test_training_checkpoints_evaluates_and_exports(trained):
    state = json.loads((trained / "train_state.json").read_text())
    assert state["steps"] == 2 and state["resumed_from"] == 0
    assert [entry["step"] for entry in state["history"]] == [1, 2]
    assert all(entry["loss"] > 0 for entry in state["history"])
    assert torch.load(trained / "ckpt.pt", weights_only=True)["step"] == 2
    evaluations = [json.loads(line) for line in (trained / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evaluations] == [2]
    assert set(evaluations[0]["concept"]) == {"0.0", "0.5", "1.0"}
    assert set(evaluations[0]["unrelated"]) == {"0.0", "1.0"}
    assert all(0.0 <= v["all_ok"] <= 1.0 and v["count"] == 2 for part in ("concept", "unrelated")
               for v in evaluations[0][part].values())
    assert (trained / "samples.png").is_file()
    with safe_open(str(trained / "toy.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_network_dim"] == str(RANK) and float(metadata["ss_network_alpha"]) == ALPHA
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert json.loads(metadata["graphengine.lora_training"])["trigger_words"] == list(concept.TRIGGER_WORDS)
    assert json.loads(metadata["graphengine.lora_eval"]) == evaluations[0]


def test_rerun_skips_a_finished_run(trained, capsys):
    before = (trained / "train_state.json").stat().st_mtime_ns
    _run(trained, "--steps", "2", "--eval-every", "2")
    assert (trained / "train_state.json").stat().st_mtime_ns == before
    assert "already trained for 2 steps, skipping" in capsys.readouterr().out


def test_resumed_run_equals_an_uninterrupted_one(trained, tmp_path):
    _run(tmp_path, "--steps", "1", "--eval-every", "0")
    _run(tmp_path, "--steps", "2", "--eval-every", "0")
    assert json.loads((tmp_path / "train_state.json").read_text())["resumed_from"] == 1
    with safe_open(str(tmp_path / "toy.safetensors"), "pt") as handle:
        record = json.loads(handle.metadata()["graphengine.lora_training"])
    assert record["runs"] == [{"from": 0, "steps": 1}, {"from": 1, "steps": 2}] and record["step"] == 2
    resumed, uninterrupted = load_file(tmp_path / "toy.safetensors"), load_file(trained / "toy.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert any(v.abs().sum() > 0 for k, v in resumed.items() if "lora_up" in k)  # training moved the up weights


def _linear_names(model: torch.nn.Module, prefix: str) -> dict[str, torch.nn.Linear]:
    return {f"{prefix}_{path.replace('.', '_')}": module for path, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)}


def test_export_is_kohya_format_naming_real_modules(trained, base_model):
    path = trained / "toy.safetensors"
    tensors = load_file(path)
    assert path.stat().st_size < 5_000_000
    assert all(KEY_RE.match(key) for key in tensors), [k for k in tensors if not KEY_RE.match(k)][:3]
    linears = {**_linear_names(base_model.unet, "lora_unet"),
               **_linear_names(base_model.text_encoder, "lora_te_text_model")}
    names = {key.split(".")[0] for key in tensors}
    assert names <= set(linears), sorted(names - set(linears))[:3]
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in names
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj" in names
    assert "lora_te_text_model_encoder_layers_2_self_attn_q_proj" in names
    assert "lora_te_text_model_encoder_layers_0_mlp_fc2" in names
    assert len(names) == 70 + 18 and len(tensors) == 3 * len(names)
    for name in names:
        module = linears[name]
        down, up, alpha = (tensors[f"{name}.{part}"] for part in ("lora_down.weight", "lora_up.weight", "alpha"))
        assert down.dtype == up.dtype == alpha.dtype == torch.float16
        assert down.shape == (RANK, module.in_features) and up.shape == (module.out_features, RANK)
        assert alpha.shape == () and float(alpha) == ALPHA


def test_merge_at_strength_zero_is_exact_and_at_one_adds_the_scaled_product(trained, base_model):
    tensors = load_file(trained / "toy.safetensors")
    unet, text_encoder = copy.deepcopy(base_model.unet), copy.deepcopy(base_model.text_encoder)
    models = {"lora_unet": unet, "lora_te": text_encoder}
    assert lora.merge_kohya(models, tensors, 0.0) == 88
    for merged, original in ((unet, base_model.unet), (text_encoder, base_model.text_encoder)):
        want = original.state_dict()
        assert all(torch.equal(value, want[key]) for key, value in merged.state_dict().items())
    lora.merge_kohya(models, tensors, 1.0)
    name = "lora_te_text_model_encoder_layers_1_self_attn_v_proj"
    down, up = tensors[f"{name}.lora_down.weight"].float(), tensors[f"{name}.lora_up.weight"].float()
    expected = base_model.text_encoder.encoder.layers[1].self_attn.v_proj.weight + (ALPHA / RANK) * up @ down
    assert torch.allclose(text_encoder.encoder.layers[1].self_attn.v_proj.weight, expected, atol=1e-6)
    with pytest.raises(KeyError, match="names no Linear"):
        lora.merge_kohya(models, {"lora_unet_no_such_module.alpha": torch.tensor(1.0),
                                  "lora_unet_no_such_module.lora_down.weight": torch.zeros(1, 1),
                                  "lora_unet_no_such_module.lora_up.weight": torch.zeros(1, 1)}, 1.0)


def test_merged_weights_match_the_adapter_at_any_strength():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5))
    reference = copy.deepcopy(model)
    adapters = lora.add_adapters(model, ("0",), rank=3, alpha=1.5)
    torch.nn.init.normal_(adapters["0"].up.weight)
    x = torch.randn(4, 6)
    for strength in (0.5, 1.0):
        adapters["0"].strength = strength
        merged = copy.deepcopy(reference)
        lora.merge_kohya({"lora_unet": merged}, lora.kohya_state_dict({"lora_unet": adapters}, torch.float32),
                         strength)
        assert torch.allclose(model(x), merged(x), atol=1e-5)


def test_corner_scenes_render_in_the_corners_and_score():
    scenes = concept.concept_eval_scenes()
    assert len(scenes) == 28 and {o.position for s in scenes for o in s.objects} == set(sd.CORNER_ANCHORS)
    for scene in scenes[:24:5]:
        image, _ = sd.render(scene, seed=7)
        assert "corner" in sd.caption(scene) and sd.parse_prompt(sd.caption(scene)) == scene
        assert concept.score_concept(image, scene)["all_ok"] == 1.0
        obj = scene.objects[0]
        # the same picture asked for in the opposite corner fails; the base scorer has no corner anchors at all
        opposite = {"top left": "bottom right", "bottom right": "top left", "top right": "bottom left",
                    "bottom left": "top right"}[obj.position]
        moved = sd.SceneSpec((sd.ShapeSpec(obj.color, obj.shape, opposite, obj.size),), scene.background)
        assert concept.score_concept(image, moved)["pos_ok"] == 0.0
        ys, xs = np.nonzero(sd.classify_pixels(image) == list(sd.SCORE_COLORS).index(obj.color))
        assert abs(xs.mean() - sd.CORNER_ANCHORS[obj.position][0]) < 4
        assert abs(ys.mean() - sd.CORNER_ANCHORS[obj.position][1]) < 4


def test_corner_training_scenes_never_repeat_an_evaluation_combination():
    held_out, rng = concept.concept_eval_scenes(), random.Random(3)
    training = [concept.training_corner_scene(rng, held_out) for _ in range(300)]
    assert not any(sd.is_held_out(scene, held_out) for scene in training)
    assert any(len(s.objects) == 2 for s in training) and all(
        o.position in sd.CORNER_ANCHORS for s in training for o in s.objects)
