"""Thousands of seeded mutations of the shipped workflows POSTed to a real loopback server with the full node
registry: not one HTTP 500, every refusal in ComfyUI's error shape, and the server still runs a valid prompt after.

The worker is held by a gate node while the fuzz runs, so prompts that pass validation are queued, then cleared,
never executed: the test exercises the HTTP layer, validation and admission, not the sampler.
For a longer hunt: GRAPHENGINE_FUZZ_SEED=… GRAPHENGINE_FUZZ_REQUESTS=50000 pytest tests/abuse/test_fuzz_workflows.py"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from collections import Counter
from pathlib import Path

from graphengine import Node, NodeOutput, RuntimeConfig, build_registry, validate_prompt
from tests.server.harness import GUARD_SECONDS, REPO, serve
from tests.workflows.conftest import unbundled_model_names

from .mutations import mutated_request

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
REQUESTS = int(os.environ.get("GRAPHENGINE_FUZZ_REQUESTS", "3000"))
SEED = int(os.environ.get("GRAPHENGINE_FUZZ_SEED", "20261205"))
CONCURRENCY = 8


def gate_node(opened: threading.Event) -> type[Node]:
    class FuzzGate(Node):
        """Output node that holds the worker until the test opens the gate."""

        CATEGORY = "test"
        OUTPUT_NODE = True
        RETURNS = ()

        def execute(self, ctx) -> NodeOutput:
            while not opened.wait(0.05):
                ctx.check_cancelled()  # a failed test stops the server, which cancels this
            return NodeOutput(values=(), ui={"text": ["opened"]})

    return FuzzGate


async def post(srv, body: str | bytes) -> tuple[int, str, str]:
    response = await srv.client.post("/prompt", data=body, headers={"Content-Type": "application/json"})
    return response.status, response.content_type, await response.text()


def problem(status: int, content_type: str, text: str) -> str | None:
    """Why a response breaks the contract, or None."""
    if status not in (200, 400):
        return f"HTTP {status}"
    if content_type != "application/json":
        return f"content type {content_type}"
    body = json.loads(text)
    if status == 200:
        return None if isinstance(body.get("prompt_id"), str) else "200 without prompt_id"
    error = body.get("error")
    if not isinstance(error, dict) or not {"type", "message", "details", "extra_info"} <= set(error):
        return "400 without ComfyUI's error object"
    if error["type"] in ("server_error", "exception_during_validation"):
        return f"unexpected exception: {error['message'][:300]}"
    return None


def test_mutated_workflows_never_get_a_500_and_the_server_still_runs_prompts(tmp_path):
    bases = [json.loads(path.read_text()) for path in WORKFLOWS]
    assert len(bases) >= 5
    registry = build_registry(RuntimeConfig(base_dir=tmp_path, models_dir=REPO / "models", input_dir=REPO / "input",
                                            output_dir=tmp_path / "output",
                                            extra_model_paths=[unbundled_model_names(tmp_path)]))
    for base in bases:  # each shipped workflow is valid (this also does the model lists' one-time imports)
        validate_prompt(base, registry)
    opened = threading.Event()
    registry.register_all([gate_node(opened)], python_module="tests.abuse.test_fuzz_workflows")
    guard = GUARD_SECONDS + REQUESTS / 50  # a hang fails the test; never an assertion on speed
    asyncio.run(asyncio.wait_for(fuzz_server(tmp_path, registry, bases, opened), guard))


async def fuzz_server(tmp_path: Path, registry, bases: list[dict], opened: threading.Event) -> None:
    rng = random.Random(SEED)
    async with serve(tmp_path, registry=registry) as srv:
        gate = await srv.post_prompt({"g": {"class_type": "FuzzGate", "inputs": {}}})
        while srv.state.worker.running_prompt_id() != gate["prompt_id"]:
            await asyncio.sleep(0.02)
        for base in bases:  # unmutated, each shipped workflow is accepted by the server too
            status, _, text = await post(srv, json.dumps({"prompt": base}))
            assert status == 200, text

        accepted: list[str] = []
        statuses: Counter[int] = Counter()
        problems: list[tuple[str, str]] = []
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(body: str | bytes) -> None:
            async with limit:
                status, content_type, text = await post(srv, body)
            statuses[status] += 1
            if status == 200:
                accepted.append(json.loads(text)["prompt_id"])
            why = problem(status, content_type, text)
            if why is not None:
                problems.append((why, (body if isinstance(body, str) else body.decode(errors="replace"))[:400]))

        bodies = [mutated_request(rng, rng.choice(bases), accepted) for _ in range(REQUESTS)]
        await asyncio.gather(*(one(body) for body in bodies))
        assert problems == [], f"{len(problems)} bad answers, first: {problems[:3]}"
        assert sum(statuses.values()) == REQUESTS and statuses[400] > REQUESTS // 2 and statuses[200] > 0, statuses

        assert srv.state.worker.running_prompt_id() == gate["prompt_id"]  # the worker never moved on
        assert (await srv.client.post("/queue", json={"clear": True})).status == 200
        opened.set()
        assert (await srv.wait_history(gate["prompt_id"]))["status"]["status_str"] == "success"
        valid = {"1": {"class_type": "LoadImage", "inputs": {"image": "img2img_init.png"}},
                 "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "after_fuzz"}}}
        entry = await srv.wait_history((await srv.post_prompt(valid))["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        saved = entry["outputs"]["2"]["images"][0]
        assert (Path(tmp_path / "output") / saved["subfolder"] / saved["filename"]).is_file()
