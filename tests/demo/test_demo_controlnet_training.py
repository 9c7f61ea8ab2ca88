"""tools/train_demo_controlnet.py end to end at toy size: trains, checkpoints, evaluates, skips a finished run,
resumes exactly, and exports an original-layout (`control_model.*`) fp16 file that the engine's ControlNet loader
reads back, without hints, into the ControlNet that was trained; the hint is the scene's depth map as the workflow
loads it (or the engine Canny node's edge map)."""

from __future__ import annotations

import json
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

import shapes_data as sd  # noqa: E402
import train_demo_controlnet as train  # noqa: E402
from nodes.controlnet.layout import classify  # noqa: E402
from nodes.controlnet.load import load_control_model  # noqa: E402

pytestmark = pytest.mark.skipif(not train.DEFAULT_CHECKPOINT.is_file(), reason="the demo model is absent")

TOY_ARGS = ["--batch", "2", "--ckpt-every", "1", "--log-every", "1", "--eval-count", "2", "--sample-steps", "2",
            "--threads", "1", "--name", "toy"]


def _run(out: Path, *extra: str):
    threads = torch.get_num_threads()
    try:
        return train.main(["--out", str(out), *TOY_ARGS, *extra])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_controlnet")
    _run(out, "--steps", "2", "--eval-every", "2")
    return out


def test_training_checkpoints_evaluates_and_exports(trained):
    state = json.loads((trained / "train_state.json").read_text())
    assert state["steps"] == 2 and state["resumed_from"] == 0
    assert [entry["step"] for entry in state["history"]] == [1, 2]
    assert all(entry["loss"] > 0 for entry in state["history"])
    assert torch.load(trained / "ckpt.pt", weights_only=True)["step"] == 2
    evaluations = [json.loads(line) for line in (trained / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evaluations] == [2]
    assert all(evaluations[0][k]["count"] == 2 for k in ("controlnet", "without"))
    assert (trained / "samples.png").is_file()
    with safe_open(str(trained / "toy.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    record = json.loads(metadata["graphengine.controlnet_training"])
    assert record["control"] == "depth" and record["timestep_power"] == 3.0 and "canny_thresholds" not in record
    assert json.loads(metadata["graphengine.controlnet_eval"]) == evaluations[0]


def test_rerun_skips_a_finished_run(trained, capsys):
    before = (trained / "train_state.json").stat().st_mtime_ns
    _run(trained, "--steps", "2", "--eval-every", "2")
    assert (trained / "train_state.json").stat().st_mtime_ns == before
    assert "already trained for 2 steps, skipping" in capsys.readouterr().out


def test_resumed_run_equals_an_uninterrupted_one(trained, tmp_path):
    _run(tmp_path, "--steps", "1", "--eval-every", "0")
    _run(tmp_path, "--steps", "2", "--eval-every", "0")
    assert json.loads((tmp_path / "train_state.json").read_text())["resumed_from"] == 1
    resumed, uninterrupted = load_file(tmp_path / "toy.safetensors"), load_file(trained / "toy.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert any(v.abs().sum() > 0 for k, v in resumed.items() if "zero_convs" in k)  # training moved the zero convs


def test_export_is_the_original_layout_and_loads_back_into_the_trained_net(trained):
    tensors = load_file(trained / "toy.safetensors")
    assert all(k.startswith("control_model.") and v.dtype == torch.float16 for k, v in tensors.items())
    assert classify(tensors).form == "original"
    assert {"control_model.input_hint_block.0.weight", "control_model.zero_convs.0.0.weight",
            "control_model.middle_block_out.0.weight", "control_model.time_embed.0.weight"} <= set(tensors)
    loaded = load_control_model(trained / "toy.safetensors")
    state = torch.load(trained / "ckpt.pt", weights_only=True)["controlnet"]
    mine = loaded.state_dict()
    assert mine.keys() == state.keys()
    assert all(torch.equal(mine[k], state[k].half().float()) for k in state)


def test_the_depth_hint_is_the_scenes_filled_silhouette_as_the_png_holds_it():
    from make_workflow_inputs import depth_image

    scene = sd.held_out_scenes()[1]
    hint = train.scene_hints([scene])
    png = torch.from_numpy(np.array(depth_image(sd.render(scene)[1]))).permute(2, 0, 1).float() / 255
    assert hint.shape == (1, 3, sd.IMAGE_SIZE, sd.IMAGE_SIZE) and torch.equal(hint[0], png)
    placed = sd.layout(scene)[0]
    ys, xs = torch.nonzero(hint[0, 0] > 0.25, as_tuple=True)
    assert len(xs) > 50 and hint[0, 0].max() >= 0.5  # filled, nearer than the black background
    assert abs(xs.float().mean() - placed.center[0]) < 2 and abs(ys.float().mean() - placed.center[1]) < 2


def test_the_canny_hint_is_the_canny_nodes_edge_map_of_the_scene():
    scene = sd.held_out_scenes()[1]
    hint = train.scene_hints([scene], control="canny")
    assert hint.shape == (1, 3, sd.IMAGE_SIZE, sd.IMAGE_SIZE) and set(hint.unique().tolist()) <= {0.0, 1.0}
    placed = sd.layout(scene)[0]
    ys, xs = torch.nonzero(hint[0, 0], as_tuple=True)
    assert len(xs) > 10  # the outline of the shape, around its centre
    assert abs(xs.float().mean() - placed.center[0]) < 3 and abs(ys.float().mean() - placed.center[1]) < 3


def test_cubic_timesteps_favour_high_noise():
    def draw(power: float) -> torch.Tensor:
        return train.biased_timesteps(20_000, 1000, power, torch.Generator().manual_seed(0))

    uniform, cubic = draw(1.0), draw(3.0)
    assert 0 <= int(cubic.min()) and int(cubic.max()) <= 999 and cubic.dtype == torch.int64
    assert abs(uniform.float().mean() - 500) < 10 and abs(cubic.float().mean() - 750) < 10  # E[1 - u^3] = 3/4
    assert (cubic >= 500).float().mean() > 0.75  # P(u^3 <= 1/2) = 0.79
