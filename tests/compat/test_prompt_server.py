"""`server.PromptServer.instance` in a running graphengine server: a pack's aiohttp route is served, and
`send_sync` from inside a node reaches the prompt's websocket client."""

from __future__ import annotations

import importlib
import sys

from aiohttp import web

from graphengine import Node, NodeOutput
from nodes.comfy_compat import prompt_server
from tests.server.harness import async_test, receive_until_done, serve
from tests.server.nodepack import make_registry


class Announce(Node):
    """Sends a custom websocket message to the client that queued the prompt, like a pack's node."""

    CATEGORY = "test"
    OUTPUT_NODE = True

    def execute(self, ctx) -> NodeOutput:
        instance = importlib.import_module("server").PromptServer.instance
        instance.send_sync("compat.announce", {"client": instance.client_id, "prompt": instance.last_prompt_id},
                           instance.client_id)
        return NodeOutput(())


@async_test
async def test_pack_routes_and_messages_reach_the_server(tmp_path):
    registry = make_registry(tmp_path / "output")
    registry.register(Announce, python_module="custom_nodes.compat_test")
    registry.add_import_shim("server", prompt_server.build)
    registry.add_server_extension(prompt_server.attach_installed)
    installed = registry.install_import_shims()
    try:
        server = importlib.import_module("server")
        assert isinstance(server.PromptServer.instance, prompt_server.PromptServer)
        assert server.PromptServer.instance.client_id is None  # no node running here

        @server.PromptServer.instance.routes.get("/compat_test/hello")
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"hello": request.query.get("name", "")})

        async with serve(tmp_path, registry) as srv:
            response = await srv.client.get("/compat_test/hello?name=pack")
            assert response.status == 200 and await response.json() == {"hello": "pack"}
            ws = await srv.ws("listener")
            reply = await srv.post_prompt({"1": {"class_type": "Announce", "inputs": {}}}, client_id="listener")
            frames = await receive_until_done(ws, reply["prompt_id"])
            announced = [data for kind, data in frames if kind == "compat.announce"]
            assert announced == [{"client": "listener", "prompt": reply["prompt_id"]}]
            await ws.close()
    finally:
        for name in installed:
            sys.modules.pop(name, None)


@async_test
async def test_a_failing_server_extension_is_logged_and_the_server_serves(tmp_path, caplog):
    registry = make_registry(tmp_path / "output")

    def broken(bridge):
        raise RuntimeError("pack route setup failed")

    registry.add_server_extension(broken)
    async with serve(tmp_path, registry) as srv:
        response = await srv.client.get("/object_info")
        assert response.status == 200
    assert "pack route setup failed" in caplog.text


def test_prompt_server_says_it_serves_pack_frontends_itself():
    # packs read this list to decide whether to copy their scripts into the server's own web folder
    assert "custom_nodes_from_web" in prompt_server.build().PromptServer.instance.supports
