"""The command line a newcomer meets: `serve` flags and URL, --version, --set typos, pure --json, closed pipes,
"not in list" errors that name the models folder, `doctor`, --threads. Subprocesses use the torch-free example
pack (GRAPHENGINE_NODE_PACKS) unless a test needs the SD pack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from graphengine.cli import main
from graphengine.options import default_threads
from tests.server.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
GRAPH = {"1": {"class_type": "CountTo", "inputs": {"steps": 3}},
         "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 2}},
         "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}}}
BROKEN_PACK = "raise RuntimeError('this pack is broken on purpose')\n"
GOOD_PACK = '''from typing import Annotated
from graphengine import Node, NodeOutput, Output
class FirstFiveNode(Node):
    """A custom node loaded with --custom-nodes."""
    RETURNS = (Output("INT"),)
    def execute(self, ctx):
        return NodeOutput((1,))
NODE_CLASSES = [FirstFiveNode]
'''


def env(pack: str | None = "graphengine.examples:register") -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    if pack:
        e["GRAPHENGINE_NODE_PACKS"] = pack
    return e


def cli(*args: str, cwd: Path, pack: str | None = "graphengine.examples:register") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphengine", *args], capture_output=True, text=True,
                          env=env(pack), cwd=cwd, timeout=120)


def workflow(tmp_path: Path) -> str:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(GRAPH))
    return str(path)


def custom_nodes(tmp_path: Path) -> Path:
    folder = tmp_path / "custom_nodes"
    folder.mkdir()
    (folder / "broken_pack.py").write_text(BROKEN_PACK)
    (folder / "good_pack.py").write_text(GOOD_PACK)
    return folder


def test_version_and_serve_help_lists_every_server_flag(tmp_path):
    version = cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("graphengine ")
    helped = cli("serve", "--help", cwd=tmp_path)
    assert helped.returncode == 0
    for flag in ("--port", "--listen", "--preview-method", "--custom-nodes", "--extra-model-paths", "--threads",
                 "--models-dir", "--base-dir", "--auth-token", "--max-batch-pixels"):
        assert flag in helped.stdout, flag
    server_py = subprocess.run([sys.executable, "server.py", "--help"], capture_output=True, text=True, env=env(),
                               cwd=ROOT, timeout=120)
    assert server_py.stdout == helped.stdout  # one parser behind both entry points


def test_serve_takes_port_and_custom_nodes_and_prints_the_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "graphengine", "serve", "--port", str(port), "--base-dir",
                             str(tmp_path), "--custom-nodes", str(custom_nodes(tmp_path)), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=5) as response:
                    info = json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert "FirstFiveNode" in info and "CountTo" in info
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "custom node pack" in err and "broken_pack.py failed to load: RuntimeError: this pack is broken" in err


def test_set_on_an_unknown_input_fails_naming_the_real_inputs(tmp_path):
    done = cli("run", workflow(tmp_path), "--set", "2.bb=5", "--base-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "node 2 (Add) has no input 'bb'" in done.stderr and "its inputs: a, b" in done.stderr
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())
    ok = cli("run", workflow(tmp_path), "--set", "2.b=5", "--json", "--base-dir", str(tmp_path), cwd=tmp_path)
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["outputs"] == {"3": {"text": ["8"]}}  # stdout is one JSON document


def test_closed_pipe_ends_quietly(tmp_path):
    big = {str(i): {"class_type": "Add", "inputs": {"a": i, "b": 1}} for i in range(5000)}  # > a pipe's buffer
    (tmp_path / "big.json").write_text(json.dumps(big))
    done = subprocess.run(f'"{sys.executable}" -m graphengine convert big.json | head -c 5', shell=True,
                          capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=120)
    assert done.stdout == '{\n  "'
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_threads_must_be_positive(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRAPHENGINE_NODE_PACKS", "graphengine.examples:register")
    assert main(["run", workflow(tmp_path), "--threads", "0", "--base-dir", str(tmp_path)]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert default_threads() >= 1


def test_model_not_in_list_names_the_folder_searched(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh folder: no models here
    code = main(["validate", str(ROOT / "workflows" / "txt2img.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "ckpt_name: 'graphengine-demo.safetensors' not in []" in err
    assert f"looked for in {tmp_path / 'models' / 'checkpoints'}" in err


def test_doctor_reports_folders_threads_and_failed_packs(tmp_path, capsys):
    yaml_file = tmp_path / "extra_model_paths.yaml"
    (tmp_path / "elsewhere" / "ckpts").mkdir(parents=True)
    yaml_file.write_text(f"mine:\n  base_path: {tmp_path / 'elsewhere'}\n  checkpoints: ckpts\n")
    code = main(["doctor", "--json", "--base-dir", str(tmp_path), "--custom-nodes", str(custom_nodes(tmp_path)),
                 "--extra-model-paths", str(yaml_file), "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["folders"]["models"] == str(tmp_path / "models")
    assert str(tmp_path / "elsewhere" / "ckpts") in report["model_folders"]["checkpoints"]
    assert report["threads"] == 1 and report["devices"] and report["dtype"] == "float32"
    assert report["custom_packs_loaded"] == [str(tmp_path / "custom_nodes" / "good_pack.py")]
    (failed,) = report["custom_packs_failed"]
    assert failed["path"].endswith("broken_pack.py") and "broken on purpose" in failed["error"]
    assert set(report["extras"]) >= {"editor", "upscale", "ray"}
