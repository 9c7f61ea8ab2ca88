"""Start-up: the node packs' warm-up runs before serving, off the event loop, so the first prompt neither imports
the model machinery inside the request nor stalls the loop; a failing warm-up is reported, never fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from graphengine import NodeRegistry

from .harness import async_test, serve
from .nodepack import NODE_CLASSES, PackServices

ROOT = Path(__file__).resolve().parents[2]
# A functional bound on blocking (the request used to hold the loop for seconds), not a speed claim.
MAX_LOOP_LAG_S = 0.5


def test_the_first_prompt_with_the_real_node_pack_does_not_block_the_loop(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GRAPHENGINE_NODE_PACKS"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "tests.server.loop_probe", str(tmp_path), str(ROOT / "models"),
               str(ROOT / "workflows" / "txt2img.json")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["post_status"] == 200 and report["node_errors"] == {}, report
    assert {"torch", "diffusers", "transformers"} <= set(report["heavy_imported_at_start"]), report
    assert report["imported_by_post"] == [], report
    assert report["validate_max_lag_s"] < MAX_LOOP_LAG_S, report


@async_test
async def test_a_failing_warm_up_is_logged_and_the_server_still_serves(tmp_path, caplog):
    registry = NodeRegistry(services=PackServices(output_dir=tmp_path / "output"))
    registry.register_all(NODE_CLASSES, python_module="tests.server.nodepack")
    calls = []
    registry.on_warm_up(lambda: calls.append("ran"))
    registry.on_warm_up(lambda: 1 / 0)
    async with serve(tmp_path, registry=registry) as srv:
        assert calls == ["ran"]
        assert any("warm-up" in r.message and "ZeroDivisionError" in r.message for r in caplog.records)
        info = await (await srv.client.get("/object_info")).json()
        assert set(info) == {cls.__name__ for cls in NODE_CLASSES}
