"""comfy-catapult (PyPI, used unchanged): strict pydantic parsing of /queue, /history, /object_info and the
websocket; completion found by polling."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from .checks import assert_png_of_size, fetch_view, saved_images
from .live import txt2img_prompt

pytestmark = pytest.mark.filterwarnings("ignore:The .alias. attribute")

pytest.importorskip("comfy_catapult", reason="comfy-catapult is not installed (see the client extra)")


async def run_job(url: str, prompt: dict) -> dict:
    from comfy_catapult.api_client import ComfyAPIClient
    from comfy_catapult.catapult import ComfyCatapult

    async with ComfyAPIClient(comfy_api_url=url) as client:
        async with ComfyCatapult(comfy_client=client, debug_path=None) as catapult:
            return await catapult.Catapult(job_id=str(uuid.uuid4()), prepared_workflow=prompt, important=["9"])


def test_catapult_job_completes_with_the_saved_image(server_url):
    history = asyncio.run(asyncio.wait_for(run_job(server_url, txt2img_prompt(prefix="catapult")), 120))
    # the returned dict is the history entry as catapult parsed it: 5-element prompt tuple, status, outputs
    assert history["status"]["status_str"] == "success"
    images = history["outputs"]["9"]["images"]
    assert images[0]["filename"].startswith("catapult")
    prompt_id = history["prompt"][1]
    assert saved_images(server_url, prompt_id) == images
    assert_png_of_size(fetch_view(server_url, images[0]))
