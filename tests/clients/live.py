"""A real server process for the client and editor tests: `server.py` on a free 127.0.0.1 port, a models folder
holding a tiny random-weight SD1.x checkpoint, and the classic txt2img prompt in API format."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = "tiny_sd15.safetensors"
IMAGE_SIZE = 64
START_TIMEOUT = 180.0  # importing torch + diffusers on a busy 2-core machine; a guard, not a speed check


def write_tiny_checkpoint(models_dir: Path) -> str:
    """Write (once) a tiny SD1.x-layout checkpoint with the real single-file writer; returns its name."""
    path = models_dir / "checkpoints" / CHECKPOINT
    if not path.exists():
        from nodes.models.single_file import save_checkpoint
        from tests.nodes_sd.tiny import tiny_text_encoder, tiny_unet, tiny_vae

        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, tiny_unet(), tiny_vae(), [tiny_text_encoder()], "sd15")
    return CHECKPOINT


def txt2img_prompt(seed: int = 42, prefix: str = "client", steps: int = 2) -> dict[str, Any]:
    """ComfyUI's default graph (same node ids and titles) shrunk to a 64x64 image and two steps."""
    def node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}

    return {
        "3": node("KSampler", "KSampler", seed=seed, steps=steps, cfg=7.0, sampler_name="euler", scheduler="normal",
                  denoise=1.0, model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0]),
        "4": node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=CHECKPOINT),
        "5": node("EmptyLatentImage", "Empty Latent Image", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=1),
        "6": node("CLIPTextEncode", "CLIP Text Encode (Prompt)", text="a red apple on a table", clip=["4", 1]),
        "7": node("CLIPTextEncode", "CLIP Text Encode (Negative)", text="blurry", clip=["4", 1]),
        "8": node("VAEDecode", "VAE Decode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", "Save Image", filename_prefix=prefix, images=["8", 0]),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            get_json(url + "/system_stats", timeout=2.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer within {START_TIMEOUT}s:\n{log.read_text()[-4000:]}")


@contextmanager
def live_server(base: Path, *extra_args: str) -> Iterator[str]:
    """Run `server.py --base-dir base` on a free port; yields `http://127.0.0.1:PORT`; stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = base / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(ROOT / "server.py"), "--port", str(port), "--base-dir", str(base),
               "--log-level", "WARNING", *extra_args]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=base, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_base(tmp_path_factory, name: str) -> Path:
    """A fresh server folder whose models/ holds the tiny checkpoint (written once per test session)."""
    shared_models = tmp_path_factory.getbasetemp() / "tiny_models"
    write_tiny_checkpoint(shared_models)
    base = tmp_path_factory.mktemp(name)
    (base / "models").symlink_to(shared_models, target_is_directory=True)
    return base
