"""The official editor in a real headless Chromium: it boots against our server, loads a txt2img workflow,
queues it, and shows the generated image (fetched from /view) on the Save Image node. Screenshot:
tests_output/editor.png.

Needs Debian's `chromium` (/usr/bin/chromium, or $GRAPHENGINE_CHROMIUM), `node` and the npm package
`playwright-core` (in tests/editor/node_modules, ./node_modules, the global npm root, or a node_modules folder named by
$GRAPHENGINE_PLAYWRIGHT_NODE_PATH), and the `editor` extra; skips with the reason when any is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from graphengine.server.static import frontend_root
from tests.clients.live import IMAGE_SIZE, ROOT, get_json, live_server, server_base

from .workflow import txt2img_workflow

HERE = Path(__file__).resolve().parent
SCREENSHOT = ROOT / "tests_output" / "editor.png"
PAGE_TIMEOUT_MS = 120_000  # a guard against hangs on a busy CI machine, not a speed assertion
SEEDED_SETTINGS = {  # a returning user: no tutorial/templates dialog, no missing-node popups for the default graph
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
}


def chromium_path() -> str | None:
    path = os.environ.get("GRAPHENGINE_CHROMIUM", "/usr/bin/chromium")
    return path if os.access(path, os.X_OK) else None


def node_modules_candidates(node: str) -> list[Path]:
    candidates = [Path(p) for p in os.environ.get("GRAPHENGINE_PLAYWRIGHT_NODE_PATH", "").split(os.pathsep) if p]
    candidates += [HERE / "node_modules", ROOT / "node_modules"]
    npm = shutil.which("npm")
    if npm:
        try:
            done = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30)
            candidates.append(Path(done.stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return [c for c in candidates if (c / "playwright-core" / "package.json").is_file()]


def browser_requirements() -> tuple[str, str, str]:
    """(chromium, node, NODE_PATH) or pytest.skip with what is missing."""
    if frontend_root() is None:
        pytest.skip("the editor extra (comfyui-frontend-package) is not installed")
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium) or $GRAPHENGINE_CHROMIUM")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    found = node_modules_candidates(node)
    if not found:
        pytest.skip("playwright-core not found (npm install --prefix tests/editor playwright-core)")
    return chromium, node, str(found[0])


def seed_settings(base: Path) -> None:
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SEEDED_SETTINGS))


def drive(node: str, node_path: str, config: dict, work: Path) -> dict:
    config_file = work / "drive_config.json"
    config_file.write_text(json.dumps(config))
    env = {**os.environ, "NODE_PATH": node_path}
    done = subprocess.run([node, str(HERE / "drive_editor.cjs"), str(config_file)], env=env, capture_output=True,
                          text=True, timeout=PAGE_TIMEOUT_MS / 1000 * 2)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_editor_runs_txt2img_and_shows_the_image(tmp_path_factory):
    chromium, node, node_path = browser_requirements()
    base = server_base(tmp_path_factory, "editor_server")
    seed_settings(base)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    with live_server(base) as url:
        config = {"url": url + "/", "chromium": chromium, "workflow": txt2img_workflow(),
                  "screenshot": str(SCREENSHOT), "timeout_ms": PAGE_TIMEOUT_MS}
        page = drive(node, node_path, config, base)
        prompt_id = page["promptReply"]["prompt_id"]
        history = get_json(f"{url}/history/{prompt_id}")[prompt_id]

    assert page["pageErrors"] == [] and page["failedApi"] == [], page
    assert page["loadedTypes"] == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode",
                                          "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"])
    # the editor converted the graph itself: numeric ids, links as [id, slot], our widget values
    posted = page["postedPrompt"]
    assert posted["3"]["class_type"] == "KSampler" and posted["3"]["inputs"]["model"] == ["4", 0]
    assert posted["3"]["inputs"]["seed"] == 42 and posted["5"]["inputs"]["width"] == IMAGE_SIZE
    assert page["promptStatus"] == 200 and page["promptReply"]["node_errors"] == {}

    assert history["status"]["status_str"] == "success"
    saved = history["outputs"]["9"]["images"][0]
    assert saved["filename"].startswith("editor")
    shown = page["shown"][0]
    assert "/view?" in shown["src"] and f"filename={saved['filename']}" in shown["src"]
    assert (shown["width"], shown["height"]) == (IMAGE_SIZE, IMAGE_SIZE)
    assert any(r["status"] == 200 and r["type"] == "image/png" for r in page["viewResponses"]), page["viewResponses"]
    assert SCREENSHOT.stat().st_size > 10_000
