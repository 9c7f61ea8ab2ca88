"""ComfyUI's unified jobs API (`/api/jobs`), derived from the queue and the history."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..queue import QueueItem
from .state import BadRequest, add_route, json_off_loop, off_loop, query_int, read_json_object, state_of

JOB_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
PREVIEWABLE = ("images", "video", "gifs", "animated", "audio")


def _workflow_id(extra_data: dict[str, Any]) -> Any:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") if isinstance(
        extra_data.get("extra_pnginfo"), dict) else None
    return workflow.get("id") if isinstance(workflow, dict) else None


def _pruned(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if v is not None}


def _base(item: QueueItem, status: str) -> dict[str, Any]:
    return {"id": item.prompt_id, "status": status, "priority": item.number,
            "create_time": item.extra_data.get("create_time"), "workflow_id": _workflow_id(item.extra_data)}


def _history_status(entry: dict[str, Any]) -> str:
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return "completed"
    if any(m[0] == "execution_interrupted" for m in status.get("messages", [])):
        return "cancelled"
    return "failed"


def _preview(outputs: dict[str, Any]) -> tuple[int, int, dict[str, Any] | None]:
    total, previewable, first = 0, 0, None
    for node_id, ui in outputs.items():
        for media, values in ui.items():
            values = values if isinstance(values, list) else [values]
            total += len(values)
            if media not in PREVIEWABLE:
                continue
            for value in values:
                if isinstance(value, dict) and "filename" in value:
                    previewable += 1
                    if first is None:
                        first = {**value, "nodeId": node_id, "mediaType": media}
    return total, previewable, first


def history_job(entry: dict[str, Any], *, detail: bool = False) -> dict[str, Any]:
    item = QueueItem.from_list(entry["prompt"])
    job = _base(item, _history_status(entry))
    messages = (entry.get("status") or {}).get("messages", [])
    times = [data.get("timestamp") for _, data in messages if isinstance(data, dict)]
    start = next((data.get("timestamp") for name, data in messages if name == "execution_start"), None)
    job["execution_start_time"] = start
    job["execution_end_time"] = times[-1] if times and times[-1] is not None else None
    job["execution_error"] = next((data for name, data in messages if name == "execution_error"), None)
    outputs = entry.get("outputs") or {}
    job["outputs_count"], job["previewable_outputs_count"], job["preview_output"] = _preview(outputs)
    if detail:
        job["outputs"] = outputs
        job["execution_status"] = entry.get("status")
        job["workflow"] = {"prompt": item.prompt, "extra_data": item.extra_data}
    return _pruned(job)


def queue_job(item: QueueItem, running: bool, *, detail: bool = False) -> dict[str, Any]:
    job = _base(item, "in_progress" if running else "pending")
    job["outputs_count"] = 0
    job["previewable_outputs_count"] = 0
    if detail:
        job["workflow"] = {"prompt": item.prompt, "extra_data": item.extra_data}
    return _pruned(job)


def all_jobs(state) -> list[dict[str, Any]]:
    jobs = [queue_job(i, True) for i in state.queue.running()]
    jobs += [queue_job(i, False) for i in state.queue.pending()]
    jobs += [history_job(e) for e in state.queue.history().values()]
    return jobs


def _sort_key(sort_by: str):
    if sort_by == "execution_duration":
        return lambda j: (j.get("execution_end_time") or 0) - (j.get("execution_start_time") or 0)
    return lambda j: j.get("create_time") or 0


async def list_jobs(request: web.Request) -> web.Response:
    state = state_of(request)
    statuses = [s for s in request.query.get("status", "").split(",") if s]
    unknown = [s for s in statuses if s not in JOB_STATUSES]
    if unknown:
        raise BadRequest("invalid_query", "unknown job status", ",".join(unknown)[:200])
    sort_by = request.query.get("sort_by", "created_at")
    sort_order = request.query.get("sort_order", "desc")
    if sort_by not in ("created_at", "execution_duration") or sort_order not in ("asc", "desc"):
        raise BadRequest("invalid_query", "sort_by must be created_at|execution_duration, sort_order asc|desc")
    offset = query_int(request, "offset", 0) or 0
    limit = query_int(request, "limit")
    workflow_id = request.query.get("workflow_id")

    def listing() -> dict[str, Any]:  # reads the whole queue and history: in the thread pool
        jobs = [j for j in all_jobs(state) if (not statuses or j["status"] in statuses)
                and (not workflow_id or j.get("workflow_id") == workflow_id)]
        jobs.sort(key=_sort_key(sort_by), reverse=sort_order == "desc")
        page = jobs[offset:offset + limit] if limit is not None else jobs[offset:]
        return {"jobs": page, "pagination": {
            "offset": offset, "limit": limit, "total": len(jobs), "has_more": offset + len(page) < len(jobs)}}

    return await json_off_loop(listing)


def job_detail(state, job_id: str) -> dict[str, Any] | None:
    queued = state.queue.item(job_id)
    if queued is not None:
        return queue_job(queued[1], queued[0] == "running", detail=True)
    entry = state.queue.history_entry(job_id)
    return None if entry is None else history_job(entry, detail=True)


async def get_job(request: web.Request) -> web.Response:
    job = await off_loop(job_detail, state_of(request), request.match_info["job_id"])
    if job is None:
        return web.json_response({"error": "Job not found"}, status=404)
    return web.json_response(job)


def cancel(state, job_id: str) -> bool:
    """Interrupt a running job or remove a pending one (any thread: the status broadcast goes through the hub)."""
    queued = state.queue.item(job_id)
    if queued is None:
        return False
    if queued[0] == "running":
        return state.worker.interrupt(job_id)
    cancelled = bool(state.queue.delete_pending([job_id]))
    state.hub.broadcast_status_threadsafe()
    return cancelled


async def cancel_job(request: web.Request) -> web.Response:
    cancelled = await off_loop(cancel, state_of(request), request.match_info["job_id"])
    return web.json_response({"cancelled": cancelled})


async def cancel_jobs(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    ids = body.get("job_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise BadRequest("invalid_request", "job_ids must be a list of job ids")
    state = state_of(request)
    results = await off_loop(lambda: [cancel(state, job_id) for job_id in ids])
    return web.json_response({"cancelled": any(results)})


def setup(app: web.Application) -> None:
    add_route(app, "GET", "/jobs", list_jobs)
    add_route(app, "POST", "/jobs/cancel", cancel_jobs)
    add_route(app, "GET", "/jobs/{job_id}", get_job)
    add_route(app, "POST", "/jobs/{job_id}/cancel", cancel_job)
