import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphengine.cli import main
from graphengine.workflow_io import parse_override, png_text_chunks

GRAPH = {"1": {"class_type": "CountTo", "inputs": {"steps": 5}},
         "node.with.dots": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 2}},
         "3": {"class_type": "ShowValue", "inputs": {"value": ["node.with.dots", 0]}}}


@pytest.fixture(autouse=True)
def example_pack(monkeypatch):
    monkeypatch.setenv("GRAPHENGINE_NODE_PACKS", "graphengine.examples:register")


def write(tmp_path, data, name="wf.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_ok_prints_json_and_progress(tmp_path, capsys):
    code, out, err = run_cli(["run", write(tmp_path, GRAPH), "--json", "--base-dir", str(tmp_path)], capsys)
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1])["outputs"] == {"3": {"text": ["7"]}}
    assert "CountTo 1" in err and "5/5" in err  # the tqdm bar of the progress-reporting node


def test_set_overrides_with_dotted_node_ids(tmp_path, capsys):
    code, out, _ = run_cli(["run", write(tmp_path, GRAPH), "--quiet", "--json", "--set", "node.with.dots.b=40",
                            "--set", "1.steps=2", "--base-dir", str(tmp_path)], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["outputs"]["3"] == {"text": ["42"]}
    assert parse_override("KSampler.0.text=a cat") == ("KSampler.0", "text", "a cat")
    assert parse_override("3.seed=7") == ("3", "seed", 7)


@pytest.mark.parametrize("content, needle", [
    ("{not json", "invalid JSON at line 1"),
    ({"1": {"class_type": "Nope", "inputs": {}}}, "node Nope does not exist"),
    ({"1": {"class_type": "Number", "inputs": {"value": "x"}},
      "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}, "node 1 (Number): Failed to convert"),
])
def test_invalid_workflows_exit_2_with_one_line_messages(tmp_path, capsys, content, needle):
    code, _, err = run_cli(["run", write(tmp_path, content), "--base-dir", str(tmp_path)], capsys)
    assert code == 2 and needle in err and "Traceback" not in err


def test_missing_node_types_are_all_reported_by_validate_run_and_convert(tmp_path, capsys):
    api = {**GRAPH, "7": {"class_type": "KSampler (Efficient)", "inputs": {}},
           "8": {"class_type": "EmptySD3LatentImage", "inputs": {}}, "9": {"class_type": "Mystery", "inputs": {}}}
    ui = {"nodes": [{"id": 1, "type": "ShowValue", "inputs": [], "outputs": [], "widgets_values": []},
                    {"id": 5, "type": "CLIPTextEncodeFlux", "inputs": [], "outputs": [], "widgets_values": []},
                    {"id": 6, "type": "ShowText|pysssss", "inputs": [], "outputs": [], "widgets_values": []}],
          "links": [], "version": 0.4}
    for command in ("validate", "run"):
        code, _, err = run_cli([command, write(tmp_path, api), "--base-dir", str(tmp_path)], capsys)
        assert code == 2 and "Traceback" not in err
        assert "Cannot execute because node KSampler (Efficient) does not exist. Also missing: " \
               "EmptySD3LatentImage, Mystery." in err
        assert [line.split(":")[0].strip() for line in err.splitlines()[1:]] == [
            "node 7 (KSampler (Efficient))", "node 8 (EmptySD3LatentImage)", "node 9 (Mystery)"]
    for command in ("validate", "run", "convert"):
        code, out, err = run_cli([command, write(tmp_path, ui, "ui.json")], capsys)
        assert code == 2 and "Traceback" not in err and out == ""
        assert "2 node(s) of unknown type" in err
        assert "node 5 (CLIPTextEncodeFlux)" in err and "node 6 (ShowText|pysssss)" in err


def test_missing_file_and_bad_override(tmp_path, capsys):
    code, _, err = run_cli(["run", str(tmp_path / "nope.json")], capsys)
    assert code == 2 and "no such file" in err
    code, _, err = run_cli(["run", write(tmp_path, GRAPH), "--set", "99.value=1"], capsys)
    assert code == 2 and "no node '99'" in err
    code, _, err = run_cli(["run", write(tmp_path, GRAPH), "--set", "novalue"], capsys)
    assert code == 2 and "expected NODE.INPUT=VALUE" in err


def test_execution_error_exits_1(tmp_path, capsys):
    graph = {"f": {"class_type": "Fail", "inputs": {"message": "out of cheese"}},
             "s": {"class_type": "ShowValue", "inputs": {"value": ["f", 0]}}}
    code, _, err = run_cli(["run", write(tmp_path, graph), "--quiet"], capsys)
    assert code == 1 and "Fail (node f) failed: RuntimeError: out of cheese" in err and "Traceback" not in err


def test_validate_and_nodes(tmp_path, capsys):
    code, out, _ = run_cli(["validate", write(tmp_path, GRAPH)], capsys)
    assert code == 0 and "outputs 3" in out
    code, _, err = run_cli(["validate", write(tmp_path, {"1": {"class_type": "Number", "inputs": {}}})], capsys)
    assert code == 2 and "Prompt has no outputs" in err
    code, out, _ = run_cli(["nodes", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["Add"]["input"]["required"]["b"][0] == "INT"
    code, out, _ = run_cli(["nodes"], capsys)
    assert "CountTo" in out and "steps:INT" in out


def test_png_prompt_chunk_is_read(tmp_path, capsys):
    import zlib
    import struct

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) +
           chunk(b"tEXt", b"prompt\0" + json.dumps(GRAPH).encode()) +
           chunk(b"tEXt", b"workflow\0{\"nodes\": [], \"links\": []}") + chunk(b"IEND", b""))
    path = tmp_path / "saved.png"
    path.write_bytes(png)
    assert set(png_text_chunks(png)) == {"prompt", "workflow"}
    code, out, _ = run_cli(["run", str(path), "--quiet", "--json"], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["outputs"]["3"] == {"text": ["7"]}


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "GRAPHENGINE_NODE_PACKS": "graphengine.examples:register"}
    proc = subprocess.run([sys.executable, "-m", "graphengine", "validate", write(tmp_path, GRAPH)],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2], timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_engine_never_imports_torch():
    code = ("import sys, pkgutil, importlib, graphengine\n"
            "for m in pkgutil.walk_packages(graphengine.__path__, 'graphengine.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "assert 'torch' not in sys.modules, 'graphengine imported torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2], timeout=120)
    assert proc.returncode == 0, proc.stderr
