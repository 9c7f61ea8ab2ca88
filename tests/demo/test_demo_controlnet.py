"""The committed demo ControlNet through the engine: the file loads through ControlNetLoader with no hints, the
bundled `controlnet` workflow runs, and on held-out scenes (never trained on) with prompts that leave the position
out, the depth map of the scene puts the shape where it says, nearer than the same prompt without the ControlNet.

Skipped when the demo model or the ControlNet file is absent. Thresholds leave margin below what the ControlNet
scores (bench/demo_controlnet_quality.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "bench", ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from tests.demo.test_demo_model import BASE_FILE, MODELS_DIR  # noqa: E402

CONTROLNET_FILE = MODELS_DIR / "controlnet" / "graphengine-demo-depth.safetensors"
pytestmark = pytest.mark.skipif(not (BASE_FILE.is_file() and CONTROLNET_FILE.is_file()),
                                reason="the demo model or the demo ControlNet is absent "
                                       "(tools/train_demo_controlnet.py)")

import demo_controlnet_quality as bench  # noqa: E402
import demo_quality as dq  # noqa: E402
import shapes_data as sd  # noqa: E402

SCENE_PICKS = (0, 1, 2, 3)  # held-out singles: left, right, top, bottom (shapes and sizes vary)
STEPS = 10
MIN_CLOSER = 3  # scenes whose shape lands nearer the control's position with the ControlNet than without


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return dq.make_engine(MODELS_DIR, tmp_path_factory.mktemp("demo_controlnet"))


def test_the_bundled_file_is_an_original_layout_controlnet_of_the_demo_unet():
    from diffusers import ControlNetModel

    from nodes.controlnet.layout import classify
    from nodes.controlnet.load import load_control_model
    from nodes.models.state_dict import read_state_dict

    weights, metadata = read_state_dict(CONTROLNET_FILE)
    assert classify(weights).form == "original" and all(k.startswith("control_model.") for k in weights)
    net = load_control_model(CONTROLNET_FILE)  # what ControlNetLoader calls; the workflow test runs the node
    assert isinstance(net, ControlNetModel) and tuple(net.config.block_out_channels) == (64, 128, 128)
    assert CONTROLNET_FILE.stat().st_size < 8_000_000
    record = json.loads(metadata["graphengine.controlnet_training"])
    assert record["base_model"] == BASE_FILE.name and record["control"] == "depth"


def test_the_controlnet_template_runs(engine):
    from workflows import templates

    shutil.copy(ROOT / "input" / "depth_map.png", engine.input_dir / "depth_map.png")
    prompt = templates.controlnet("a large red circle and a small blue square on a gray background", steps=STEPS,
                                  registry=engine.registry).to_api()
    result = engine.executor.execute(prompt)
    assert result.ok, result.error
    saved = [entry for output in result.outputs.values() for entry in output.get("images", [])]
    assert len(saved) == 1 and (engine.output_dir / saved[0]["subfolder"] / saved[0]["filename"]).is_file()


def _centroid_error(image: np.ndarray, scene) -> float:
    error = sd.score(image, scene)["objects"][0]["centroid_error"]
    return float("inf") if error is None else error


def test_the_depth_map_moves_the_shape_to_where_the_control_says(engine):
    singles, _ = dq.held_out_split()
    scenes = [singles[i] for i in SCENE_PICKS]
    assert {s.objects[0].position for s in scenes} == {"left", "right", "top", "bottom"}
    closer, placed = 0, 0
    for index, scene in enumerate(scenes):
        name = bench.control_image(engine, scene, index)
        prompt = sd.caption(dq.without_positions(scene))
        with_control, without = (bench.render(engine, prompt, name, CONTROLNET_FILE.name, strength, 1000 + index,
                                              steps=STEPS) for strength in (1.0, 0.0))
        closer += _centroid_error(with_control, scene) < _centroid_error(without, scene)
        placed += bool(sd.score(with_control, scene)["pos_ok"])
    assert closer >= MIN_CLOSER, (closer, placed)
    assert placed >= MIN_CLOSER - 1, (closer, placed)
