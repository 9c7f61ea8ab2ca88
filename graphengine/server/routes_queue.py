"""/prompt, /queue, /history, /interrupt, /free: submitting prompts and inspecting or editing the queue."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from aiohttp import web

from ..admission import AdmissionLimits, admit
from ..events import now_ms
from ..queue import DuplicatePromptError, QueueItem
from ..registry import NodeRegistry
from ..validation import PromptValidationError, ValidatedPrompt, validate_prompt
from .security import json_error
from .state import BadRequest, add_route, json_off_loop, off_loop, query_int, read_json_object, state_of

SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
# Old clients send arbitrary ids; accept any reasonable token instead of insisting on a UUID.
PROMPT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).status())


def _prompt_id(body: dict[str, Any]) -> str:
    value = body.get("prompt_id")
    if value is None:
        return str(uuid.uuid4())
    if not isinstance(value, str) or not PROMPT_ID_PATTERN.match(value):
        raise BadRequest("invalid_prompt_id", "prompt_id must be a string of letters, digits and . _ : -",
                         str(value)[:200])
    return value


def _number(body: dict[str, Any], counter: int) -> int | float:
    if "number" not in body or body["number"] is None:
        return counter
    value = body["number"]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest("invalid_number", "number must be a number", str(value)[:100])
    try:
        number = float(value)
    except ValueError:
        raise BadRequest("invalid_number", "number must be a number", str(value)[:100]) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise BadRequest("invalid_number", "number must be finite", str(value)[:100])
    return int(number) if number.is_integer() else number


def validate_and_admit(prompt: Any, registry: NodeRegistry, limits: AdmissionLimits,
                       targets: Any = None) -> ValidatedPrompt:
    """Validation, then admission control (both raise PromptValidationError with ComfyUI's 400 body)."""
    validated = validate_prompt(prompt, registry, targets)
    admit(validated, registry.services, limits)
    return validated


async def post_prompt(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json_object(request)
    prompt = body.get("prompt")
    if prompt is None:
        return json_error(400, "no_prompt", "No prompt provided", "No prompt provided")
    extra_data = body.get("extra_data", {})
    if extra_data is None:
        extra_data = {}
    if not isinstance(extra_data, dict):
        raise BadRequest("invalid_extra_data", "extra_data must be a JSON object", type(extra_data).__name__)
    prompt_id = _prompt_id(body)
    number = _number(body, state.queue.next_number(front=bool(body.get("front"))))
    extra_data = dict(extra_data)
    client_id = body.get("client_id")
    if isinstance(client_id, str) and client_id:
        extra_data["client_id"] = client_id
    extra_data.setdefault("create_time", now_ms())
    sensitive = {k: extra_data.pop(k) for k in SENSITIVE_KEYS if k in extra_data}
    loop = asyncio.get_running_loop()
    try:
        validated = await loop.run_in_executor(None, validate_and_admit, prompt, state.registry, state.limits,
                                               body.get("partial_execution_targets"))
    except PromptValidationError as exc:
        return web.json_response(exc.body(), status=400)
    item = QueueItem(number, prompt_id, prompt, extra_data, list(validated.outputs))
    state.worker.keep_sensitive(prompt_id, sensitive)
    if item.client_id:
        state.hub.expect(item.client_id)
    try:
        state.queue.put(item)
    except DuplicatePromptError:
        state.worker.keep_sensitive(prompt_id, {})
        return json_error(400, "duplicate_prompt_id", "A prompt with this prompt_id is already queued", prompt_id)
    state.hub.broadcast_status()
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": validated.node_errors})


def queue_listing(queue) -> dict[str, Any]:
    return {"queue_running": [i.as_list() for i in queue.running()],
            "queue_pending": [i.as_list() for i in queue.pending()]}


async def get_queue(request: web.Request) -> web.Response:
    return await json_off_loop(queue_listing, state_of(request).queue)


def _id_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise BadRequest("invalid_request", f"{key} must be a list of prompt ids")
    return [str(v) for v in value]


async def post_queue(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json_object(request)
    if body.get("clear"):
        await off_loop(state.queue.clear_pending)
    if "delete" in body:
        await off_loop(state.queue.delete_pending, _id_list(body, "delete"))
    state.hub.broadcast_status()
    return web.Response(status=200)


async def get_history(request: web.Request) -> web.Response:
    queue = state_of(request).queue
    max_items = query_int(request, "max_items")
    offset = query_int(request, "offset")
    return await json_off_loop(lambda: queue.history(max_items=max_items, offset=offset))


async def get_history_entry(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    entry = await off_loop(state_of(request).queue.history_entry, prompt_id)
    return await json_off_loop(lambda: {prompt_id: entry} if entry is not None else {})


async def post_history(request: web.Request) -> web.Response:
    queue = state_of(request).queue
    body = await read_json_object(request)
    if body.get("clear"):
        await off_loop(queue.clear_history)
    if "delete" in body:
        await off_loop(queue.delete_history, _id_list(body, "delete"))
    return web.Response(status=200)


async def post_interrupt(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_json_object(request, optional=True)
    except BadRequest:
        body = {}  # ComfyUI accepts any body here; a bad one means "interrupt whatever runs"
    prompt_id = body.get("prompt_id")
    state.worker.interrupt(prompt_id if isinstance(prompt_id, str) and prompt_id else None)
    return web.Response(status=200)


async def post_free(request: web.Request) -> web.Response:
    body = await read_json_object(request, optional=True)
    state_of(request).worker.request_free(bool(body.get("unload_models")), bool(body.get("free_memory")))
    return web.Response(status=200)


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/prompt", get_prompt)
    add_route(app, "POST", "/prompt", post_prompt)
    add_route(app, "GET", "/queue", get_queue)
    add_route(app, "POST", "/queue", post_queue)
    add_route(app, "GET", "/history", get_history)
    add_route(app, "GET", "/history/{prompt_id}", get_history_entry)
    add_route(app, "POST", "/history", post_history)
    add_route(app, "POST", "/interrupt", post_interrupt)
    add_route(app, "POST", "/free", post_free)
