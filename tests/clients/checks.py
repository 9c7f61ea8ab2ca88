"""Assertions shared by the client tests: what a finished txt2img run must have produced on the server."""

from __future__ import annotations

import io
import urllib.parse
import urllib.request

from PIL import Image

from .live import IMAGE_SIZE, get_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png_of_size(data: bytes, size: int = IMAGE_SIZE) -> Image.Image:
    assert data[:8] == PNG_MAGIC, data[:16]
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (size, size)
    return image


def fetch_view(url: str, image: dict) -> bytes:
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                    "type": image["type"]})
    with urllib.request.urlopen(f"{url}/view?{query}", timeout=30) as response:
        return response.read()


def saved_images(url: str, prompt_id: str, node_id: str = "9") -> list[dict]:
    """The images `node_id` reported in /history/{prompt_id}, after checking the run succeeded."""
    entry = get_json(f"{url}/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"], entry["status"]
    images = entry["outputs"][node_id]["images"]
    assert images and all(i["type"] == "output" for i in images)
    return images
