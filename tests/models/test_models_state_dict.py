"""Reading weight files: safetensors with metadata, pickles only via weights_only, clear errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from nodes.models import ModelFileError, read_state_dict
from nodes.models.state_dict import write_safetensors

TENSORS = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(4, dtype=torch.float16)}


def _same(actual, expected=TENSORS):
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) and actual[k].dtype == expected[k].dtype for k in expected)


def test_safetensors_with_metadata(tmp_path):
    write_safetensors(tmp_path / "m.safetensors", TENSORS, {"modelspec.title": "x"})
    tensors, metadata = read_state_dict(tmp_path / "m.safetensors")
    _same(tensors)
    assert metadata == {"modelspec.title": "x"}


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_formats_and_state_dict_unwrapping(tmp_path, suffix):
    torch.save({"state_dict": dict(TENSORS), "global_step": 875000, "epoch": 3}, tmp_path / f"m{suffix}")
    tensors, metadata = read_state_dict(tmp_path / f"m{suffix}")
    _same(tensors)
    assert metadata["global_step"] == "875000"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_model_file",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(TENSORS), "payload": _Exploit()}, path)
    with pytest.raises(ModelFileError, match=r"evil\.ckpt.*refused"):
        read_state_dict(path)
    assert not (tmp_path / "pwned_by_model_file").exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit(), protocol=2))
    with pytest.raises(ModelFileError, match=r"raw\.pt"):
        read_state_dict(raw)
    assert not (tmp_path / "pwned_by_model_file").exists()


def test_truncated_and_corrupt_files(tmp_path):
    write_safetensors(tmp_path / "full.safetensors", TENSORS)
    data = (tmp_path / "full.safetensors").read_bytes()
    cases = {
        "cut.safetensors": data[: len(data) - 5],
        "header_only.safetensors": data[:20],
        "tiny.safetensors": b"\x01\x02",
        "garbage.safetensors": (16).to_bytes(8, "little") + b"{not json at all" + b"\x00" * 32,
        "garbage.ckpt": b"this is not a zip archive" * 10,
    }
    torch.save(dict(TENSORS), tmp_path / "full.ckpt")
    cases["cut.ckpt"] = (tmp_path / "full.ckpt").read_bytes()[:200]
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
            read_state_dict(tmp_path / name)


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"model\.onnx.*expected one of .*\.safetensors"):
        read_state_dict(tmp_path / "model.onnx")
    with pytest.raises(ModelFileError, match=r"absent\.safetensors"):
        read_state_dict(tmp_path / "absent.safetensors")


def test_pickle_without_tensors(tmp_path):
    torch.save({"state_dict": {"step": 1}}, tmp_path / "empty.pt")
    with pytest.raises(ModelFileError, match=r"empty\.pt: no tensors"):
        read_state_dict(tmp_path / "empty.pt")
