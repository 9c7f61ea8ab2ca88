"""comfy-api-simplified (PyPI, used unchanged): queue the workflow file, wait on the websocket, download images."""

from __future__ import annotations

import json

import pytest

from .checks import assert_png_of_size
from .live import txt2img_prompt

simplified = pytest.importorskip("comfy_api_simplified",
                                 reason="comfy-api-simplified is not installed (see the client extra)")


def test_queue_and_wait_images_returns_the_png(server_url, tmp_path):
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(txt2img_prompt(prefix="simplified")))
    api = simplified.ComfyApiWrapper(server_url)
    workflow = simplified.ComfyWorkflowWrapper(str(path))
    workflow.set_node_param("KSampler", "seed", 123)  # found by the `_meta.title` the server must accept
    images = api.queue_and_wait_images(workflow, "Save Image")
    assert len(images) == 1
    name, data = next(iter(images.items()))
    assert name.startswith("simplified")
    assert_png_of_size(data)
