"""The committed demo LoRA through the engine's `lora` workflow template: at strength 1 it puts shapes in the corners
the prompt names (the base model, at strength 0, never does), and it leaves held-out base prompts intact.

Skipped when the demo model or the LoRA file is absent. Thresholds leave margin below what the LoRA scores
(bench/demo_lora_quality.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "bench", ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from tests.demo.test_demo_model import BASE_FILE, MODELS_DIR  # noqa: E402

LORA_FILE = MODELS_DIR / "loras" / "graphengine-demo-corners.safetensors"
pytestmark = pytest.mark.skipif(not (BASE_FILE.is_file() and LORA_FILE.is_file()),
                                reason="the demo model or the demo LoRA is absent (tools/train_demo_lora.py)")

import corner_concept as concept  # noqa: E402
import demo_lora_quality as bench  # noqa: E402
import demo_quality as dq  # noqa: E402
import shapes_data as sd  # noqa: E402

CONCEPT_PICKS = (0, 5, 7, 12, 17, 22)  # of the evaluation set (never trained on): all corners, shapes and sizes
MIN_CORNERS_PLACED = 3  # at strength 1; the LoRA places ~70 % of the evaluation set
MAX_BASE_CORNERS_PLACED = 1  # at strength 0 (the base model); it places none of the evaluation set
UNRELATED_SCENES = 4
MIN_UNRELATED_FOLLOWED = 3  # held-out base prompts still right at strength 1


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return dq.make_engine(MODELS_DIR, tmp_path_factory.mktemp("demo_lora"))


def _placed(engine, scenes, strength: float, scorer) -> int:
    count = 0
    for index, scene in enumerate(scenes):
        result = scorer(bench.render(engine, scene, strength, 1000 + index, "dpmpp_2m"), scene)
        count += bool(result["pos_ok"] and result["color_ok"])
    return count


def test_the_lora_teaches_corners_the_base_model_does_not_know(engine):
    scenes = [concept.concept_eval_scenes()[i] for i in CONCEPT_PICKS]
    assert len({s.objects[0].position for s in scenes}) >= 3
    with_lora = _placed(engine, scenes, 1.0, concept.score_concept)
    without = _placed(engine, scenes, 0.0, concept.score_concept)
    assert with_lora >= MIN_CORNERS_PLACED, (with_lora, without)
    assert without <= MAX_BASE_CORNERS_PLACED, (with_lora, without)


def test_held_out_base_prompts_survive_the_lora(engine):
    scenes = dq.held_out_split(UNRELATED_SCENES)[0]
    assert _placed(engine, scenes, 1.0, sd.score) >= MIN_UNRELATED_FOLLOWED
