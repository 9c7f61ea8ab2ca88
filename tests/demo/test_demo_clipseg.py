"""The committed demo CLIPSeg through the engine (LoadImage -> CLIPSeg -> MaskToImage -> SaveImage): on held-out
scenes (never rendered in training) "the <colour> <shape>" gives a mask close to that object's exact mask, and
among two objects it covers the named one; plus a two-step smoke run of tools/train_demo_clipseg.py whose
folder the node loads.

Thresholds leave margin below what the model scores (bench/demo_clipseg_quality.py)."""

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

import demo_clipseg_quality as bench  # noqa: E402
import demo_quality as dq  # noqa: E402
import shapes_data as sd  # noqa: E402
import train_demo_clipseg as trainer  # noqa: E402

MODELS_DIR = ROOT / "models"
CLIPSEG_DIR = MODELS_DIR / "clipseg" / trainer.DEFAULT_NAME
SINGLE_PICKS = (0, 7, 19, 30)  # of the 48 held-out single-object scenes: every shape, both sizes
PAIR_PICKS = (0, 3)  # of the 8 held-out pairs: left/right and top/bottom
MIN_MEAN_IOU = 0.25  # the model scores 0.45 on all 48 held-out singles; random init 0.06


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return dq.make_engine(MODELS_DIR, tmp_path_factory.mktemp("demo_clipseg"))


def held_out(picks: tuple[int, ...], objects: int) -> list:
    scenes = [s for s in sd.held_out_scenes() if len(s.objects) == objects]
    return [scenes[i] for i in picks]


@pytest.mark.skipif(not CLIPSEG_DIR.is_dir(), reason="the demo CLIPSeg folder is absent")
def test_bundled_folder_finds_held_out_objects(engine):
    scores = bench.evaluate(engine, held_out(SINGLE_PICKS, 1))
    assert scores["iou_single"] >= MIN_MEAN_IOU, scores


@pytest.mark.skipif(not CLIPSEG_DIR.is_dir(), reason="the demo CLIPSeg folder is absent")
@pytest.mark.xfail(strict=True, reason="the 1000-step demo CLIPSeg marks both objects of a pair (picks 0.5 in "
                                       "bench/demo_clipseg_quality.py): its text tower has not learned to choose")
def test_bundled_folder_picks_the_named_object_of_two(engine):
    for scene in held_out(PAIR_PICKS, 2):
        image = np.asarray(sd.render(scene)[0])
        truths = trainer.object_masks(scene, None)
        for index, obj in enumerate(scene.objects):
            mask = bench.segment(engine, image, bench.object_query(obj))
            named, other = (mask * truths[index]).sum(), (mask * truths[1 - index]).sum()
            assert named > 3 * other, (bench.object_query(obj), scene, named, other)


def test_object_masks_match_the_render():
    scene = held_out((0,), 2)[0]
    image = np.asarray(sd.render(scene, 5)[0]).astype(int)
    masks = trainer.object_masks(scene, 5)
    for obj, mask in zip(scene.objects, masks):
        inside = image[mask > 0.99].mean(axis=0)
        assert np.abs(inside - np.array(sd.OBJECT_COLORS[obj.color])).max() < 3 * sd.COLOR_JITTER, obj
    assert not np.logical_and(masks[0] > 0.5, masks[1] > 0.5).any()


def test_training_smoke_run_writes_a_folder_the_node_loads(tmp_path):
    out = tmp_path / "run"
    info = trainer.main(["--out", str(out), "--steps", "2", "--batch", "2", "--log-every", "1"])
    assert info["steps"] == 2 and len(info["history"]) == 2
    folder = out / trainer.DEFAULT_NAME
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= names
    assert json.loads((folder / "training.json").read_text())["step"] == 2
    assert trainer.main(["--out", str(out), "--steps", "2", "--batch", "2"]) is None  # finished: skipped
    models = tmp_path / "models"
    shutil.copytree(folder, models / "clipseg" / trainer.DEFAULT_NAME)
    engine = dq.make_engine(models, tmp_path / "work")
    mask = bench.segment(engine, np.asarray(sd.render(held_out((0,), 1)[0])[0]), "the red circle")
    assert mask.shape == (sd.IMAGE_SIZE, sd.IMAGE_SIZE) and 0.0 <= mask.min() <= mask.max() <= 1.0
