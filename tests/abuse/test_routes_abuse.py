"""Odd queries, paths and bodies on every route family: each gets a structured 4xx (or a normal answer), never a
500. The first three groups each produced a 500 before their fix (SQLite integer overflow, ENAMETOOLONG, lone
UTF-16 surrogates reaching SQLite)."""

from __future__ import annotations

import pytest

from tests.server.harness import async_test, chain, serve

GETS = [
    ("/history?max_items=99999999999999999999", 400, "invalid_query"),
    ("/history?offset=99999999999999999999", 400, "invalid_query"),
    ("/jobs?limit=99999999999999999999", 400, "invalid_query"),
    ("/userdata/" + "a" * 5000, 400, "invalid_path"),
    ("/view?filename=" + "a" * 300, 400, "invalid_path"),
    ("/view?filename=a.png&subfolder=" + "b/" * 600, 400, "invalid_path"),
    ("/view?filename=%ED%A0%80", 404, "not_found"),  # undecodable bytes arrive as U+FFFD: just a missing file
    ("/history?max_items=-1", 400, "invalid_query"),
    ("/view?filename=%00", 400, "invalid_path"),
    ("/userdata?dir=%00", 400, "invalid_path"),
    ("/jobs?status=%00", 400, "invalid_query"),
]
POSTS = [
    ("/userdata/" + "a" * 5000, b"x", 400, "invalid_path"),
    ("/queue", b'{"delete": ["\\ud800"]}', 400, "invalid_json"),
    ("/history", b'{"delete": ["\\udfff"]}', 400, "invalid_json"),
    ("/settings", b'{"\\ud800": 1}', 400, "invalid_json"),
    ("/prompt", b'{"prompt": {"1": {"class_type": "\\ud800"}}}', 400, "invalid_json"),
    ("/prompt", b'{"prompt": {"1": {"class_type": "Show"}}, "client_id": "\xed\xa0\x80"}', 400, "invalid_json"),
    ("/queue", b'{"delete": [1e400]}', 400, "invalid_request"),
    ("/jobs/cancel", b'{"job_ids": [[1]]}', 400, "invalid_request"),
    ("/free", b"[]", 400, "invalid_json"),
    ("/prompt", b"\xff\xfe{", 400, "invalid_json"),
]


@async_test
async def test_odd_requests_get_structured_errors_and_the_server_keeps_working(tmp_path):
    async with serve(tmp_path) as srv:
        for path, status, error_type in GETS:
            response = await srv.client.get(path)
            body = await response.json()
            assert (response.status, body["error"]["type"]) == (status, error_type), (path[:80], body)
        for path, data, status, error_type in POSTS:
            response = await srv.client.post(path, data=data, headers={"Content-Type": "application/json"})
            body = await response.json()
            assert (response.status, body["error"]["type"]) == (status, error_type), (path[:80], data, body)
        entry = await srv.wait_history((await srv.post_prompt(chain(tag="after")))["prompt_id"])
        assert entry["status"]["status_str"] == "success"


@pytest.mark.parametrize("value", ["\ud800", "a" * 300, "x/" * 600])
def test_unnameable_paths_are_refused_before_the_disk(value):
    from graphengine.server.security import PathRejected, check_component

    with pytest.raises(PathRejected) as refused:
        check_component(value, "filename", allow_slash=True)
    assert refused.value.status == 400
