"""Editor boot routes, jobs API, /view rendering and mask uploads."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
from PIL import Image, PngImagePlugin

from .harness import async_test, chain, serve

BOOT_ROUTES = ("/object_info", "/system_stats", "/features", "/embeddings", "/models", "/extensions",
               "/settings", "/users", "/i18n", "/prompt", "/queue", "/history", "/jobs")


@async_test
async def test_boot_routes_answer_bare_and_under_api(tmp_path):
    async with serve(tmp_path) as srv:
        for route in BOOT_ROUTES:
            bare = await srv.client.get(route)
            prefixed = await srv.client.get("/api" + route)
            assert bare.status == prefixed.status == 200, route
            bare_body, prefixed_body = await bare.json(), await prefixed.json()
            if route == "/system_stats":  # free memory moves between two calls
                for body in (bare_body, prefixed_body):
                    body["system"].pop("ram_free", None)
                    for device in body["devices"]:
                        device.pop("vram_free", None), device.pop("torch_vram_free", None)
            assert bare_body == prefixed_body, route
        info = await (await srv.client.get("/api/object_info")).json()
        slow = info["Slow"]
        for key in ("input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
                    "description", "python_module", "category", "output_node"):
            assert key in slow, key
        assert slow["input"]["required"]["steps"][1]["min"] == 1
        assert await (await srv.client.get("/object_info/Show")).json() == {"Show": info["Show"]}
        assert await (await srv.client.get("/object_info/Missing")).json() == {}
        stats = await (await srv.client.get("/system_stats")).json()
        assert isinstance(stats["system"]["argv"], list) and stats["system"]["ram_total"] > 0
        assert isinstance(stats["devices"], list)
        assert await (await srv.client.get("/api/users")).json() == {"storage": "server", "migrated": True}
        assert await (await srv.client.get("/api/extensions")).json() == []
        assert (await srv.client.get("/models/not_a_folder")).status == 404


@async_test
async def test_settings_roundtrip(tmp_path):
    async with serve(tmp_path) as srv:
        assert await (await srv.client.get("/api/settings")).json() == {}
        await srv.client.post("/api/settings/Comfy.TutorialCompleted", json=True)
        await srv.client.post("/api/settings", json={"a": 1, "b": [2]})
        assert await (await srv.client.get("/api/settings")).json() == \
            {"Comfy.TutorialCompleted": True, "a": 1, "b": [2]}
        assert await (await srv.client.get("/api/settings/a")).json() == 1
        assert await (await srv.client.get("/api/settings/none")).json() is None
        stored = json.loads((tmp_path / "user" / "default" / "comfy.settings.json").read_text())
        assert stored["b"] == [2]


@async_test
async def test_jobs_api(tmp_path):
    async with serve(tmp_path) as srv:
        done = await srv.post_prompt(chain(tag="ok", save=True),
                                     extra_data={"extra_pnginfo": {"workflow": {"id": "wf-1"}}})
        failed = await srv.post_prompt(chain(tag="bad", fail=True))
        await srv.wait_history(done["prompt_id"])
        await srv.wait_history(failed["prompt_id"])
        blocker = await srv.post_prompt(chain(steps=500, delay=0.02, tag="block"))
        while srv.state.worker.running_prompt_id() != blocker["prompt_id"]:
            await asyncio.sleep(0.01)
        waiting = await srv.post_prompt(chain(tag="wait"))
        listing = await (await srv.client.get("/api/jobs?status=in_progress,pending&limit=200&offset=0")).json()
        assert {(j["id"], j["status"]) for j in listing["jobs"]} == \
            {(blocker["prompt_id"], "in_progress"), (waiting["prompt_id"], "pending")}
        assert listing["pagination"] == {"offset": 0, "limit": 200, "total": 2, "has_more": False}
        finished = await (await srv.client.get("/api/jobs?status=completed,failed,cancelled&limit=1")).json()
        assert finished["pagination"]["total"] == 2 and finished["pagination"]["has_more"] is True
        job = await (await srv.client.get(f"/api/jobs/{done['prompt_id']}")).json()
        assert job["status"] == "completed" and job["workflow_id"] == "wf-1" and job["outputs_count"] == 1
        assert job["preview_output"] == {"filename": "ok_3.png", "subfolder": "", "type": "output",
                                         "nodeId": "3", "mediaType": "images"}
        assert job["execution_start_time"] <= job["execution_end_time"]
        assert job["workflow"]["prompt"]["3"]["class_type"] == "SaveNumber"
        bad = await (await srv.client.get(f"/api/jobs/{failed['prompt_id']}")).json()
        assert bad["status"] == "failed" and bad["execution_error"]["exception_message"] == "boom"
        assert (await srv.client.get("/api/jobs/nope")).status == 404
        assert (await srv.client.get("/api/jobs?status=weird")).status == 400
        cancel = await srv.client.post(f"/api/jobs/{waiting['prompt_id']}/cancel")
        assert await cancel.json() == {"cancelled": True}
        assert await (await srv.client.post("/api/jobs/cancel", json={"job_ids": [blocker["prompt_id"]]})).json() \
            == {"cancelled": True}
        entry = await srv.wait_history(blocker["prompt_id"])
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert (await srv.client.post("/api/jobs/cancel", json={"job_ids": 5})).status == 400


@async_test
async def test_view_channels_previews_and_mask_upload(tmp_path):
    async with serve(tmp_path) as srv:
        reply = await srv.post_prompt(chain(value=7, tag="img", save=True))
        await srv.wait_history(reply["prompt_id"])
        raw = await srv.client.get("/view", params={"filename": "img_9.png", "type": "output"})
        assert raw.headers["Content-Type"] == "image/png"
        original = Image.open(io.BytesIO(await raw.read()))
        assert original.getpixel((0, 0)) == (9, 0, 0, 128)
        rgb = Image.open(io.BytesIO(await (await srv.client.get("/view?filename=img_9.png&channel=rgb")).read()))
        assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (9, 0, 0)
        alpha = Image.open(io.BytesIO(await (await srv.client.get("/view?filename=img_9.png&channel=a")).read()))
        assert alpha.getchannel("A").getpixel((0, 0)) == 128
        webp = await srv.client.get("/view?filename=img_9.png [output]&preview=webp;80&type=input")
        assert webp.headers["Content-Type"] == "image/webp"
        assert Image.open(io.BytesIO(await webp.read())).format == "WEBP"
        # the mask editor: alpha from the upload, pixels and text chunks from the original
        info = PngImagePlugin.PngInfo()
        info.add_text("prompt", "{}")
        Image.new("RGBA", (4, 4), (1, 2, 3, 255)).save(tmp_path / "input" / "base.png", pnginfo=info)
        mask = io.BytesIO()
        Image.new("RGBA", (4, 4), (0, 0, 0, 40)).save(mask, format="PNG")
        form = aiohttp.FormData()
        form.add_field("image", mask.getvalue(), filename="clipspace-mask.png", content_type="image/png")
        form.add_field("original_ref", json.dumps({"filename": "base.png", "type": "input"}))
        form.add_field("type", "input")
        form.add_field("subfolder", "clipspace")
        reply = await (await srv.client.post("/upload/mask", data=form)).json()
        assert reply == {"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"}
        merged = Image.open(tmp_path / "input" / "clipspace" / "clipspace-mask.png")
        assert merged.getpixel((0, 0)) == (1, 2, 3, 40) and merged.text["prompt"] == "{}"
        escape = aiohttp.FormData()
        escape.add_field("image", mask.getvalue(), filename="m.png", content_type="image/png")
        escape.add_field("original_ref", json.dumps({"filename": "../queue.sqlite3", "type": "input"}))
        assert (await srv.client.post("/upload/mask", data=escape)).status == 400
