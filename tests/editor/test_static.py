"""Serving the editor's files and its boot routes (no browser): index.html, JS MIME type, containment, the text
shown without the editor extra, and the blueprint / template / model-library / terminal routes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from graphengine.server import static
from tests.server.harness import async_test, chain, serve
from tests.server.nodepack import make_registry


async def bare_client(web_root: Path | None) -> TestClient:
    app = web.Application()
    static.setup(app, web_root)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


def fake_web_root(tmp_path: Path) -> Path:
    root, outside = tmp_path / "static", tmp_path / "outside"
    (root / "assets").mkdir(parents=True)
    outside.mkdir()
    (root / "index.html").write_text('<script type="module" src="./assets/app.js"></script>')
    (root / "assets" / "app.js").write_text("export const ok = 1;")
    (outside / "secret.txt").write_text("SECRET")
    os.symlink(outside / "secret.txt", root / "assets" / "link.txt")
    return root


@async_test
async def test_without_the_editor_root_says_how_to_install_it(tmp_path):
    client = await bare_client(None)
    try:
        response = await client.get("/")
        assert response.status == 200 and "pip install" in await response.text()
        assert "comfyui-frontend-package" in await response.text()
        assert (await client.get("/assets/app.js")).status == 404
    finally:
        await client.close()


@async_test
async def test_web_root_files_are_served_inside_the_root_only(tmp_path):
    client = await bare_client(fake_web_root(tmp_path))
    try:
        index = await client.get("/")
        assert index.status == 200 and "./assets/app.js" in await index.text()
        assert "no-store" in index.headers["Cache-Control"]
        script = await client.get("/assets/app.js")
        assert script.headers["Content-Type"].startswith("application/javascript")
        assert await script.text() == "export const ok = 1;"
        for path in ("/assets/link.txt", "/assets/%2e%2e/%2e%2e/outside/secret.txt", "/assets/..%2f..%2fsecret.txt",
                     "/assets", "/missing.js"):
            refused = await client.get(URL(path, encoded=True))
            assert refused.status in (400, 403, 404), path
            assert "SECRET" not in await refused.text()
        assert (await client.post("/assets/app.js", data=b"x")).status == 404  # not 405: reads like a miss
    finally:
        await client.close()


@pytest.mark.skipif(static.frontend_root() is None, reason="the editor extra (comfyui-frontend-package) is missing")
@async_test
async def test_the_installed_editor_is_served_beside_the_api(tmp_path):
    async with serve(tmp_path) as srv:
        index = await srv.client.get("/")
        html = await index.text()
        assert index.status == 200 and index.headers["Content-Type"].startswith("text/html")
        assert index.headers["Cache-Control"].startswith("no-store")
        entry = re.search(r'src="\./(assets/index-[^"]+\.js)"', html).group(1)
        script = await srv.client.get("/" + entry)
        assert script.status == 200 and script.headers["Content-Type"].startswith("application/javascript")
        assert len(await script.read()) > 1000
        assert (await srv.client.get("/api/object_info")).status == 200  # API routes win over the web root
        missing = await srv.client.get("/api/not_a_route")
        assert missing.status == 404 and (await missing.json())["error"]["type"] == "not_found"


@async_test
async def test_boot_routes_for_blueprints_templates_models_and_terminal(tmp_path):
    from nodes.models.folders import ModelFolders

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "a.safetensors").write_bytes(b"x" * 10)
    registry = make_registry(tmp_path / "output")
    registry.services.folders = ModelFolders(tmp_path / "models")  # what /experiment/models reads
    async with serve(tmp_path, registry=registry) as srv:
        for route in ("/global_subgraphs", "/node_replacements", "/workflow_templates"):
            assert await (await srv.client.get("/api" + route)).json() == {}, route
            assert await (await srv.client.get(route)).json() == {}, route
        assert (await srv.client.get("/api/global_subgraphs/nope")).status == 404
        library = await (await srv.client.get("/api/experiment/models")).json()
        checkpoints = next(entry for entry in library if entry["name"] == "checkpoints")
        assert checkpoints["folders"] == [str(tmp_path / "models" / "checkpoints")]
        files = await (await srv.client.get("/api/experiment/models/checkpoints")).json()
        assert [(f["name"], f["pathIndex"], f["size"]) for f in files] == [("a.safetensors", 0, 10)]
        assert (await srv.client.get("/api/experiment/models/nope")).status == 404
        paths = await (await srv.client.get("/internal/folder_paths")).json()
        assert paths["checkpoints"] == checkpoints["folders"]

        done = await srv.post_prompt(chain(value=3, save=True))
        await srv.wait_history(done["prompt_id"])
        assert await (await srv.client.get("/internal/files/output")).json() == ["n_5.png"]
        assert (await srv.client.get("/internal/files/secrets")).status == 400
        assert await (await srv.client.get("/internal/logs/raw")).json() == \
            {"entries": [], "size": {"cols": 80, "rows": 24}}
        assert (await srv.client.patch("/internal/logs/subscribe", json={"enabled": True})).status == 200
