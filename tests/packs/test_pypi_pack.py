"""A real ComfyUI pack published on PyPI (comfyui-ib-customnodes, installed by CI's .ci/run) runs unchanged.

Its wheel puts the pack folder `ComfyUI_Ib_CustomNodes` in site-packages; the test links it into a custom-nodes
folder and runs tools/realpacks/ib_pil_roundtrip.json through `graphengine run`, as a user would."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.find_spec("ComfyUI_Ib_CustomNodes")

pytestmark = pytest.mark.skipif(SPEC is None, reason="comfyui-ib-customnodes is not installed (.ci/run installs it)")


def test_the_pypi_pack_round_trips_an_image_through_its_nodes(tmp_path):
    packs = tmp_path / "custom_nodes"
    packs.mkdir()
    (packs / "ComfyUI_Ib_CustomNodes").symlink_to(Path(SPEC.origin).parent, target_is_directory=True)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "graphengine", "run", str(ROOT / "tools/realpacks/ib_pil_roundtrip.json"),
                           "--custom-nodes", str(packs), "--output-dir", str(out), "--base-dir", str(ROOT), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    source = np.asarray(Image.open(ROOT / "input" / "img2img_init.png").convert("RGB"))
    image = np.asarray(Image.open(next(out.glob("realpacks_ib_0*.png"))).convert("RGB"))
    assert image.shape == source.shape and np.abs(image.astype(int) - source).max() <= 1
    assert "skipped" not in done.stdout + done.stderr
