"""POST /prompt refuses what exceeds the resource limits (400, structured); out-of-memory runs fail cleanly."""

import json
from pathlib import Path

from graphengine import RuntimeConfig, build_registry
from graphengine.admission import limit_overrides
from graphengine.memory import GIB, process_rss
from graphengine.server.cli import parser

from .harness import async_test, chain, serve
from .memory_nodes import MEMORY_NODES
from .nodepack import make_registry

REPO = Path(__file__).resolve().parents[2]


def txt2img(**changes: dict) -> dict:
    prompt = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    for node_id, inputs in changes.items():
        prompt[node_id]["inputs"].update(inputs)
    return prompt


def memory_registry(root: Path):
    registry = make_registry(root / "output")
    registry.register_all(MEMORY_NODES, python_module="tests.server.memory_nodes")
    return registry


async def refused(served, prompt: dict) -> dict:
    response = await served.client.post("/prompt", json={"prompt": prompt})
    assert response.status == 400, await response.text()
    return await response.json()


@async_test
async def test_issue_reproducers_are_refused_and_the_server_keeps_serving(tmp_path):
    registry = build_registry(RuntimeConfig(base_dir=REPO))
    async with serve(tmp_path, registry) as served:
        for changes, node_id, limit in [({"2": {"text": "a " * 2_000_000}}, "2", "max_text_length"),
                                        ({"4": {"width": 16384, "height": 16384}}, "4", "max_batch_pixels"),
                                        ({"4": {"batch_size": 4096}}, "4", "max_batch_pixels"),
                                        ({"5": {"steps": 10000}, "4": {"width": 2048, "height": 2048}}, "5",
                                         "max_step_pixels")]:
            body = await refused(served, txt2img(**changes))
            assert body["error"]["type"] == "resource_limit_exceeded"
            entry = body["node_errors"][node_id]
            assert entry["class_type"] == registry.schema(txt2img()[node_id]["class_type"]).name
            assert limit in [e["extra_info"]["limit"] for e in entry["errors"]]
        queue = await (await served.client.get("/queue")).json()
        assert queue == {"queue_running": [], "queue_pending": []}
        posted = await served.post_prompt(txt2img())
        entry = await served.wait_history(posted["prompt_id"])
        assert entry["status"]["completed"] and entry["outputs"]["7"]["images"]


@async_test
async def test_server_flags_raise_a_limit(tmp_path):
    long_tag = chain(tag="x" * 30_000)  # any text input counts, whatever the node
    async with serve(tmp_path / "default") as served:
        body = await refused(served, long_tag)
        error = body["node_errors"]["2"]["errors"][0]
        assert error["extra_info"]["flag"] == "--max-text-length" and error["extra_info"]["value"] == 30_000
    overrides = limit_overrides(parser().parse_args(["--max-text-length", "40k", "--memory-budget", "64"]))
    assert overrides == {"max_text_length": 40_000, "memory_budget": 64 * GIB}
    async with serve(tmp_path / "raised", limits=overrides) as served:
        entry = await served.wait_history((await served.post_prompt(long_tag))["prompt_id"])
        assert entry["status"]["completed"]


async def failure(served, prompt: dict) -> dict:
    entry = await served.wait_history((await served.post_prompt(prompt))["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    return dict(entry["status"]["messages"])["execution_error"]


@async_test
async def test_memory_error_fails_the_prompt_naming_the_node_and_the_next_runs(tmp_path):
    async with serve(tmp_path, memory_registry(tmp_path)) as served:
        prompt = chain()
        prompt["2"] = {"class_type": "Hungry", "inputs": {"value": ["1", 0]}}
        error = await failure(served, prompt)
        assert error["node_id"] == "2" and error["node_type"] == "Hungry"
        assert error["exception_type"] == "MemoryError" and "Out of memory" in error["exception_message"]
        entry = await served.wait_history((await served.post_prompt(chain(value=4)))["prompt_id"])
        assert entry["outputs"]["3"] == {"text": ["6"]}


@async_test
async def test_memory_guard_stops_a_prompt_growing_past_the_budget(tmp_path):
    budget = process_rss() + 160 * 1024**2
    async with serve(tmp_path, memory_registry(tmp_path), limits={"memory_budget": budget}) as served:
        prompt = chain()
        prompt["2"] = {"class_type": "Allocate", "inputs": {"value": ["1", 0], "block_mb": 32, "steps": 200}}
        error = await failure(served, prompt)
        assert error["node_id"] == "2" and error["node_type"] == "Allocate"
        assert error["exception_type"] == "graphengine.memory.OutOfMemoryError"
        message = error["exception_message"]
        assert message.startswith("Out of memory") and "--memory-budget" in message
        entry = await served.wait_history((await served.post_prompt(chain(value=4)))["prompt_id"])
        assert entry["outputs"]["3"] == {"text": ["6"]}
