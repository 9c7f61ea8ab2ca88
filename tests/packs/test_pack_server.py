"""Custom node packs through the HTTP server: /object_info, POST /prompt to a PNG on disk, /extensions and the
packs' frontend files."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from tests.server.harness import (async_test, free_port, http_json, receive_until_done, serve,
                                  start_server_process)

from .conftest import PACKS, pack_registry


@async_test
async def test_pack_nodes_in_object_info_and_a_prompt_writes_their_pixels(tmp_path):
    async with serve(tmp_path, pack_registry(tmp_path)) as srv:
        info = await (await srv.client.get("/object_info/ImageBrightness")).json()
        assert info["ImageBrightness"] == srv.state.registry.node_info("ImageBrightness")
        everything = await (await srv.client.get("/api/object_info")).json()
        assert everything["PosterizeV3"]["python_module"] == "custom_nodes.v3_pack"
        assert everything["LazySwitch"]["python_module"] == "custom_nodes.v1_flow"
        ws = await srv.ws("packs-client")
        await ws.receive()  # status
        prompt = {"1": {"class_type": "SolidImage", "inputs": {"width": 6, "height": 4, "value": 0.4}},
                  "2": {"class_type": "ImageBrightness", "inputs": {"image": ["1", 0], "factor": 2.0,
                                                                    "channel": "green"}},
                  "3": {"class_type": "PosterizeV3", "inputs": {"image": ["2", 0], "levels": 2, "mode": "round"}},
                  "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "pack"}}}
        reply = await srv.post_prompt(prompt, client_id="packs-client")
        frames = await receive_until_done(ws, reply["prompt_id"])
        await ws.close()
        entry = await srv.wait_history(reply["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        (saved,) = entry["outputs"]["4"]["images"]
        pixels = np.asarray(Image.open(tmp_path / "output" / saved["subfolder"] / saved["filename"]))
        assert pixels.shape == (4, 6, 3)
        # 0.4 rounds to 0 in red and blue; green was doubled to 0.8 and rounds to 1
        assert (pixels == np.array([0, 255, 0], dtype=np.uint8)).all()
        executed = [d for kind, d in frames if kind == "executed"]
        assert {d["node"] for d in executed} == {"3", "4"}
        assert next(d for d in executed if d["node"] == "3")["output"] == {"text": ["node 3: 2 levels"]}


@async_test
async def test_pack_validation_errors_answer_400_with_comfyui_shapes(tmp_path):
    async with serve(tmp_path, pack_registry(tmp_path)) as srv:
        prompt = {"1": {"class_type": "SolidImage", "inputs": {"width": 2, "height": 2, "value": 0.5}},
                  "2": {"class_type": "EvenOnly", "inputs": {"value": 5, "source": ["1", 0]}},
                  "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}}}
        response = await srv.client.post("/prompt", json={"prompt": prompt})
        assert response.status == 400
        body = await response.json()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        assert body["node_errors"]["2"]["errors"][0]["details"] == "value must be even, got 5"
        assert body["node_errors"]["2"]["class_type"] == "EvenOnly"


@async_test
async def test_extensions_lists_and_serves_the_packs_frontend(tmp_path):
    async with serve(tmp_path, pack_registry(tmp_path)) as srv:
        for path in ("/extensions", "/api/extensions"):
            assert await (await srv.client.get(path)).json() == ["/extensions/web_pack/js/hello.js"]
        script = await srv.client.get("/extensions/web_pack/js/hello.js")
        assert script.status == 200 and script.content_type == "application/javascript"
        assert 'name: "webpack.hello"' in await script.text()
        style = await srv.client.get("/extensions/web_pack/js/hello.css")
        assert style.status == 200 and await style.text() == ".hello { color: red; }\n"
        for missing in ("/extensions/web_pack/js/nope.js", "/extensions/no_such_pack/a.js",
                        "/extensions/broken_pack/__init__.py"):
            assert (await srv.client.get(missing)).status == 404, missing
        for escape in ("/extensions/web_pack/..%2F..%2Fv1_basic%2F__init__.py",
                       "/extensions/web_pack/js/..%2F..%2F..%2Fv1_basic%2Frequirements.txt"):
            response = await srv.client.get(escape)
            assert response.status in (400, 403, 404), escape
            assert "import torch" not in await response.text() and "numpy" not in await response.text()


def test_serve_prints_the_import_summary_and_keeps_serving_past_a_broken_pack(tmp_path):
    for pack in ("web_pack", "broken_pack"):  # packs without torch: the process starts quickly
        shutil.copytree(PACKS / pack, tmp_path / "custom_nodes" / pack, ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    process = start_server_process(tmp_path, port)  # custom_nodes/ beside models/ is loaded by default
    try:
        log = (tmp_path / "server.log").read_text()
        assert "Import times for custom nodes:" in log
        assert f"seconds (IMPORT FAILED): {tmp_path / 'custom_nodes' / 'broken_pack'}" in log
        assert "No module named 'graphengine_test_missing_dependency'" in log
        assert http_json(port, "GET", "/extensions") == ["/extensions/web_pack/js/hello.js"]
        info = http_json(port, "GET", "/object_info/WebPackEcho")["WebPackEcho"]
        assert info["python_module"] == "custom_nodes.web_pack" and info["input"]["required"] == {
            "value": ["INT", {"default": 1}]}
    finally:
        process.terminate()
        process.wait(timeout=60)
