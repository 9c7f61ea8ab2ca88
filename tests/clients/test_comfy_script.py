"""ComfyScript (PyPI `comfy-script[client]`, used unchanged): builds Python node classes from our /object_info,
submits with string node ids like "KSampler.0", waits on the websocket and downloads the image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .live import CHECKPOINT, IMAGE_SIZE, ROOT

pytest.importorskip("comfy_script.runtime", reason="comfy-script[client] is not installed (see the client extra)")

JOB = Path(__file__).with_name("comfy_script_job.py")


def test_comfy_script_workflow_saves_the_png(server_url):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(JOB), server_url, CHECKPOINT, str(IMAGE_SIZE)], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [line[len("RESULT "):] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, done.stdout[-3000:] + done.stderr[-3000:]
    images, _ = json.JSONDecoder().raw_decode(results[-1])  # its watch thread may print onto the same line
    assert images == [{"format": "PNG", "size": [IMAGE_SIZE, IMAGE_SIZE]}]
