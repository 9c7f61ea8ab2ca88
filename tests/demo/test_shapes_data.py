"""Renderer, captions, held-out split and scorer of the demo model's synthetic data (tools/shapes_data.py)."""

import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import shapes_data as sd  # noqa: E402

CHECKS = ("color_ok", "pos_ok", "shape_ok", "size_ok", "bg_ok", "all_ok")
RED_CIRCLE_LEFT = sd.SceneSpec((sd.ShapeSpec("red", "circle", "left", "small"),), "blue")


def test_held_out_set_is_fixed_unique_and_excluded_from_training():
    held_out = sd.held_out_scenes()
    assert held_out == sd.held_out_scenes()
    assert len(held_out) == sd.HELD_OUT_SINGLE + sd.HELD_OUT_PAIRS == len(set(held_out))
    assert all(sd.is_held_out(scene, held_out) for scene in held_out)
    rng = random.Random(7)
    assert not any(sd.is_held_out(sd.training_scene(rng, held_out), held_out) for _ in range(300))


def test_held_out_single_objects_cover_every_position_shape_and_size():
    singles = [s.objects[0] for s in sd.held_out_scenes() if len(s.objects) == 1]
    assert {o.position for o in singles} == set(sd.POSITIONS)
    assert {o.shape for o in singles} == set(sd.SHAPES)
    assert {o.size for o in singles} == set(sd.SIZES)


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_ground_truth_renders_of_held_out_scenes_score_one(seed):
    for scene in sd.held_out_scenes():
        image, _ = sd.render(scene, seed)
        result = sd.score(image, scene)
        assert {k: result[k] for k in CHECKS} == {k: 1.0 for k in CHECKS}, sd.caption(scene)


def test_jittered_training_renders_score_one():
    rng = random.Random(3)
    for index in range(200):
        scene = sd.random_scene(rng)
        result = sd.score(sd.render(scene, seed=index)[0], scene)
        assert all(result[k] == 1.0 for k in CHECKS), sd.caption(scene)


def test_uniform_noise_fails_position_and_background():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    summary = sd.summarize([sd.score(noise, scene) for scene in sd.held_out_scenes()])
    assert summary["pos_ok"] == 0.0
    assert summary["bg_ok"] == 0.0
    assert summary["all_ok"] == 0.0


def test_score_detects_each_wrong_attribute():
    image, _ = sd.render(RED_CIRCLE_LEFT)
    obj = RED_CIRCLE_LEFT.objects[0]

    def scored(**changes):
        background = changes.pop("background", RED_CIRCLE_LEFT.background)
        return sd.score(image, sd.SceneSpec((replace(obj, **changes),), background))

    assert scored(color="green")["color_ok"] == 0.0
    assert scored(position="right")["pos_ok"] == 0.0
    assert scored(shape="square")["shape_ok"] == 0.0
    assert scored(size="large")["size_ok"] == 0.0
    assert scored(background="gray")["bg_ok"] == 0.0
    assert scored(position="right")["all_ok"] == 0.0


def test_score_skips_attributes_the_spec_leaves_out():
    image, _ = sd.render(RED_CIRCLE_LEFT)
    result = sd.score(image, sd.SceneSpec((sd.ShapeSpec("red", "circle"),)))
    assert result["pos_ok"] is None and result["size_ok"] is None and result["bg_ok"] is None
    assert result["color_ok"] == result["shape_ok"] == result["all_ok"] == 1.0


def test_score_accepts_pil_uint8_and_float_images_alike():
    image, _ = sd.render(sd.held_out_scenes()[-1], seed=5)
    as_uint8 = np.asarray(image)
    as_float = as_uint8.astype(np.float32) / 255.0
    spec = sd.held_out_scenes()[-1]
    assert sd.score(image, spec) == sd.score(as_uint8, spec) == sd.score(as_float, spec)
    with pytest.raises(ValueError):
        sd.score(as_uint8[:, :, 0], spec)


def test_render_returns_image_and_nearness_depth():
    pair = sd.SceneSpec((sd.ShapeSpec("red", "square", "left", "small"),
                         sd.ShapeSpec("white", "circle", "right", "large")), "black")
    image, depth = sd.render(pair, seed=11)
    assert isinstance(image, Image.Image) and image.size == (64, 64) and image.mode == "RGB"
    assert depth.shape == (64, 64) and depth.dtype == np.float32
    assert depth.min() == 0.0 and depth.max() <= 1.0
    assert depth[32, 1] == 0.0  # background is farthest
    small_depth, large_depth = depth[32, 10:24].max(), depth[32, 40:56].max()
    assert 0.0 < small_depth < large_depth  # objects nearer than the background, larger = nearer


def test_render_is_deterministic_per_seed():
    scene = sd.held_out_scenes()[0]
    first, second = sd.render(scene, seed=42), sd.render(scene, seed=42)
    assert np.array_equal(np.asarray(first[0]), np.asarray(second[0]))
    assert np.array_equal(first[1], second[1])
    assert not np.array_equal(np.asarray(first[0]), np.asarray(sd.render(scene, seed=43)[0]))


def test_render_rejects_incomplete_spec():
    with pytest.raises(ValueError):
        sd.render(sd.SceneSpec((sd.ShapeSpec("red", "circle"),), "blue"))


def test_caption_wording():
    assert sd.caption(RED_CIRCLE_LEFT) == "a small red circle on the left on a blue background"
    pair = sd.SceneSpec((sd.ShapeSpec("orange", "triangle", "top", "large"),
                         sd.ShapeSpec("yellow", "circle", "bottom", None)), "orange")
    assert sd.caption(pair) == ("a large orange triangle at the top and a yellow circle at the bottom"
                                " on an orange background")


def test_parse_prompt_round_trips_full_and_dropped_captions():
    rng = random.Random(5)
    for _ in range(300):
        scene = sd.random_scene(rng)
        assert sd.parse_prompt(sd.caption(scene)) == scene
        dropped = sd.drop_attributes(scene, rng, p_size=0.5, p_position=0.5, p_background=0.5)
        assert sd.parse_prompt(sd.caption(dropped)) == dropped


def test_parse_prompt_normalizes_and_rejects():
    assert sd.parse_prompt("  A Red Circle in the centre on a Blue background. ") == sd.SceneSpec(
        (sd.ShapeSpec("red", "circle", "center", None),), "blue")
    for bad in ("", "a dog on a beach", "a pink circle", "a red circle and a blue square and a green triangle"):
        with pytest.raises(ValueError):
            sd.parse_prompt(bad)


def test_summarize_averages_checks():
    image, _ = sd.render(RED_CIRCLE_LEFT)
    good = sd.score(image, RED_CIRCLE_LEFT)
    bad = sd.score(image, replace(RED_CIRCLE_LEFT, background="gray"))
    summary = sd.summarize([good, bad])
    assert summary["bg_ok"] == 0.5 and summary["color_ok"] == 1.0 and summary["count"] == 2
    assert summary["median_centroid_error"] is not None
