"""Path traversal against /view, uploads and /userdata; Host/Origin guards; the auth token; upload limits."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from yarl import URL

from graphengine.server import ServerConfig, create_app

from .harness import async_test, serve
from .nodepack import make_registry

SECRET = b"TOP-SECRET-CONTENT"
NAME_PAYLOADS = [
    "..", "../secret.txt", "../../secret.txt", "../../../../../../../../etc/passwd", "/etc/passwd", "//etc/passwd",
    "..\\secret.txt", "..\\..\\secret.txt", "C:\\Windows\\win.ini", "C:/Windows/win.ini", "sub/../../secret.txt",
    "./../secret.txt", "secret.txt\x00.png", "\x00", "link_file.png", "link_out/secret.txt", "a/../../secret.txt",
]
SUBFOLDER_PAYLOADS = ["..", "../..", "../outside", "/tmp", "/", "..\\..", "link_out", "link_out/..", "a/../..",
                      "\x00", "sub\x00/x", "C:\\"]
RAW_VIEW_QUERIES = [
    "filename=%2e%2e%2fsecret.txt", "filename=%2E%2E/secret.txt", "filename=..%2fsecret.txt",
    "filename=%2e%2e%5csecret.txt", "filename=secret.txt%00.png", "filename=%2fetc%2fpasswd",
    "filename=secret.txt&subfolder=%2e%2e", "filename=secret.txt&subfolder=%2e%2e%2f%2e%2e",
    "filename=passwd&subfolder=%2fetc", "filename=secret.txt%20%5Boutput%5D&subfolder=..",
    "filename=secret.txt&type=..", "filename=secret.txt&type=%2e%2e%2foutput", "filename=link_file.png",
    "filename=secret.txt&subfolder=link_out", "filename=%2e%2e",
]


def _layout(root: Path) -> tuple[Path, Path]:
    """base/ (the server's base dir, holding a secret beside the output folder) and outside/ with a secret."""
    base, outside = root / "base", root / "outside"
    for folder in (base / "output" / "sub", base / "input", outside):
        folder.mkdir(parents=True, exist_ok=True)
    (base / "secret.txt").write_bytes(SECRET)
    (outside / "secret.txt").write_bytes(SECRET)
    (base / "output" / "ok.txt").write_bytes(b"fine")
    for kind in ("output", "input"):
        os.symlink(outside, base / kind / "link_out")
        os.symlink(outside / "secret.txt", base / kind / "link_file.png")
    (base / "user" / "default").mkdir(parents=True)
    os.symlink(outside, base / "user" / "default" / "link_out")
    os.symlink(outside / "secret.txt", base / "user" / "default" / "link_file.json")
    return base, outside


def _snapshot(root: Path, skip: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if skip not in p.parents and p != skip}


async def _refused(response) -> None:
    body = await response.read()
    assert response.status in (400, 403, 404), (response.status, response.url)
    assert SECRET not in body


def _multipart(filename: str, subfolder: str | None = None, data: bytes = b"payload") -> tuple[bytes, str]:
    boundary = "graphengine-test-boundary"
    parts = []
    if subfolder is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n{subfolder}\r\n'
                     .encode())
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')  # RFC quoted-string: the server sees `filename`
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{quoted}"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@async_test
async def test_traversal_payloads_are_refused_and_write_nothing_outside(tmp_path):
    base, outside = _layout(tmp_path)
    async with serve(base) as srv:
        before = _snapshot(tmp_path, base / "input") | _snapshot(outside, base / "input")
        checked = 0
        for name in NAME_PAYLOADS:
            await _refused(await srv.client.get("/view", params={"filename": name}))
            await _refused(await srv.client.get("/api/view", params={"filename": "secret.txt", "subfolder": name}))
            checked += 2
        for query in RAW_VIEW_QUERIES:
            await _refused(await srv.client.get(URL(f"/view?{query}", encoded=True)))
            checked += 1
        for name in NAME_PAYLOADS:
            body, content_type = _multipart(name)
            await _refused(await srv.client.post("/upload/image", data=body, headers={"Content-Type": content_type}))
            checked += 1
        for subfolder in SUBFOLDER_PAYLOADS:
            body, content_type = _multipart("x.png", subfolder)
            await _refused(await srv.client.post("/api/upload/image", data=body,
                                                 headers={"Content-Type": content_type}))
            checked += 1
        for name in NAME_PAYLOADS:
            name = name.replace("link_file.png", "link_file.json")  # the user folder's link to the secret
            encoded = quote(name, safe="")
            await _refused(await srv.client.get(URL(f"/api/userdata/{encoded}", encoded=True)))
            await _refused(await srv.client.post(URL(f"/api/userdata/{encoded}", encoded=True), data=b"{}"))
            await _refused(await srv.client.post(URL(f"/userdata/ok.json/move/{encoded}", encoded=True)))
            await _refused(await srv.client.get("/userdata", params={"dir": name}))
            await _refused(await srv.client.get("/v2/userdata", params={"path": name}))
            checked += 5
        assert checked >= 30
        assert _snapshot(tmp_path, base / "input") | _snapshot(outside, base / "input") == before
        assert (outside / "secret.txt").read_bytes() == SECRET and sorted(os.listdir(outside)) == ["secret.txt"]
        assert sorted(os.listdir(base / "input")) == ["link_file.png", "link_out"]
        listing = await (await srv.client.get("/v2/userdata")).json()
        assert [e["name"] for e in listing] == []  # links leading outside are not even listed


@async_test
async def test_legitimate_file_access_still_works(tmp_path):
    base, _ = _layout(tmp_path)
    (base / "output" / "page.html").write_text("<script>alert(1)</script>")
    async with serve(base) as srv:
        ok = await srv.client.get("/view", params={"filename": "ok.txt"})
        assert ok.status == 200 and await ok.read() == b"fine"
        assert ok.headers["X-Content-Type-Options"] == "nosniff"
        html = await srv.client.get("/view", params={"filename": "page.html"})
        assert html.headers["Content-Type"].startswith("application/octet-stream")
        assert html.headers["Content-Disposition"].startswith("attachment")
        missing = await srv.client.get("/view", params={"filename": "nope.png", "subfolder": "sub"})
        assert missing.status == 404
        saved = await srv.client.post(URL("/api/userdata/workflows%2Fa.json", encoded=True), data=b'{"a": 1}')
        assert saved.status == 200 and await saved.json() == "workflows/a.json"
        assert (base / "user" / "default" / "workflows" / "a.json").read_bytes() == b'{"a": 1}'
        again = await srv.client.post(URL("/api/userdata/workflows%2Fa.json?overwrite=false", encoded=True),
                                      data=b"{}")
        assert again.status == 409
        listed = await (await srv.client.get("/api/userdata?dir=workflows&recurse=true&full_info=true")).json()
        assert [e["path"] for e in listed] == ["a.json"] and listed[0]["size"] == 8
        moved = await srv.client.post(URL("/api/userdata/workflows%2Fa.json/move/workflows%2Fb.json",
                                          encoded=True))
        assert moved.status == 200 and await moved.json() == "workflows/b.json"
        fetched = await srv.client.get(URL("/api/userdata/workflows%2Fb.json", encoded=True))
        assert await fetched.read() == b'{"a": 1}'
        assert fetched.headers["Content-Disposition"].startswith("attachment")
        v2 = await (await srv.client.get("/api/v2/userdata", params={"path": "workflows"})).json()
        assert [(e["name"], e["type"]) for e in v2] == [("b.json", "file")]
        deleted = await srv.client.delete(URL("/api/userdata/workflows%2Fb.json", encoded=True))
        assert deleted.status == 204


@async_test
async def test_upload_dedupes_renames_and_respects_the_size_limit(tmp_path):
    async with serve(tmp_path, max_upload_size_mb=0.01) as srv:
        async def upload(data: bytes, **fields: str):
            import aiohttp
            form = aiohttp.FormData()
            for key, value in fields.items():
                form.add_field(key, value)
            form.add_field("image", data, filename="pic.png", content_type="image/png")
            return await srv.client.post("/upload/image", data=form)

        first = await (await upload(b"one", subfolder="uploads")).json()
        assert first == {"name": "pic.png", "subfolder": "uploads", "type": "input"}
        same = await (await upload(b"one", subfolder="uploads")).json()
        assert same["name"] == "pic.png"
        different = await (await upload(b"two", subfolder="uploads")).json()
        assert different["name"] == "pic (1).png"
        third = await (await upload(b"three", subfolder="uploads")).json()
        assert third["name"] == "pic (2).png"
        replaced = await (await upload(b"four", subfolder="uploads", overwrite="true")).json()
        assert replaced["name"] == "pic.png"
        folder = tmp_path / "input" / "uploads"
        assert (folder / "pic.png").read_bytes() == b"four" and (folder / "pic (1).png").read_bytes() == b"two"
        temp = await (await upload(b"t", type="temp")).json()
        assert temp["type"] == "temp" and (tmp_path / "temp" / "pic.png").read_bytes() == b"t"
        assert (await upload(b"x", type="bogus")).status == 400
        too_big = await upload(os.urandom(50_000))
        assert too_big.status == 413
        assert not (tmp_path / "input" / "pic.png").exists()


@async_test
async def test_host_and_origin_guards(tmp_path):
    async with serve(tmp_path) as srv:
        port = srv.client.server.port
        get = srv.client.get
        assert (await get("/prompt")).status == 200
        assert (await get("/prompt", headers={"Host": f"localhost:{port}"})).status == 200
        assert (await get("/prompt", headers={"Host": f"evil.example:{port}"})).status == 403  # DNS rebinding
        assert (await get("/prompt", headers={"Host": "127.0.0.1.evil.example"})).status == 403
        assert (await get("/prompt", headers={"Origin": "null"})).status == 403
        assert (await get("/prompt", headers={"Origin": "http://evil.example"})).status == 403
        assert (await get("/prompt", headers={"Origin": f"http://evil.example:{port}"})).status == 403
        assert (await get("/prompt", headers={"Origin": f"http://127.0.0.1:{port}"})).status == 200
        assert (await get("/prompt", headers={"Origin": f"http://127.0.0.1:{port + 1}"})).status == 403
        assert (await get("/prompt", headers={"Sec-Fetch-Site": "cross-site"})).status == 403
        post = await srv.client.post("/prompt", json={"prompt": {}}, headers={"Origin": "null"})
        assert post.status == 403 and srv.state.queue.remaining() == 0
        import aiohttp
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await srv.client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403


@async_test
async def test_auth_token(tmp_path):
    async with serve(tmp_path, auth_token="s3cret") as srv:
        assert (await srv.client.get("/queue")).status == 401
        assert (await srv.client.get("/queue", headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await srv.client.get("/queue", headers={"Authorization": "Bearer s3cret"})).status == 200
        assert (await srv.client.get("/queue?token=s3cret")).status == 200
        ws = await srv.client.ws_connect("/ws?token=s3cret")
        assert (await ws.receive_json())["type"] == "status"
        await ws.close()


def test_non_loopback_needs_a_token_and_then_accepts_any_host(tmp_path):
    with pytest.raises(ValueError):
        create_app(ServerConfig(base_dir=tmp_path, listen="0.0.0.0", database=":memory:"),
                   make_registry(tmp_path / "output"))
    config = ServerConfig(base_dir=tmp_path, listen="0.0.0.0", auth_token="t", database=":memory:")
    assert not config.loopback_only
    assert ServerConfig(base_dir=tmp_path, listen="127.0.0.1,::1", database=":memory:").loopback_only
