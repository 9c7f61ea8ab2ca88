import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from nodes.clip.embeddings import find_embedding_file, load_embedding


def test_bare_tensor_pt(tmp_path):
    vectors = torch.randn(2, 8)
    torch.save(vectors, tmp_path / "plain.pt")
    assert torch.equal(load_embedding("plain", [tmp_path], "clip_l", 8), vectors)


def test_a1111_string_to_param(tmp_path):
    vectors = torch.randn(4, 8)
    torch.save({"string_to_param": {"*": vectors}, "name": "x", "step": 100}, tmp_path / "a1111.pt")
    assert torch.equal(load_embedding("a1111", [tmp_path], "clip_l", 8), vectors)


def test_single_vector_becomes_one_row(tmp_path):
    save_file({"emb_params": torch.ones(8)}, str(tmp_path / "one.safetensors"))
    assert load_embedding("one", [tmp_path], "clip_l", 8).shape == (1, 8)


def test_sdxl_file_is_read_per_encoder_key(tmp_path):
    l_vec, g_vec = torch.randn(2, 8), torch.randn(2, 12)
    save_file({"clip_g": g_vec, "clip_l": l_vec}, str(tmp_path / "xl.safetensors"))
    assert torch.equal(load_embedding("xl", [tmp_path], "clip_l", 8), l_vec)
    assert torch.equal(load_embedding("xl", [tmp_path], "clip_g", 12), g_vec)


def test_safetensors_is_preferred_and_exact_names_work(tmp_path):
    save_file({"emb_params": torch.zeros(1, 8)}, str(tmp_path / "both.safetensors"))
    torch.save(torch.ones(1, 8), tmp_path / "both.pt")
    assert find_embedding_file("both", [tmp_path]).name == "both.safetensors"
    assert torch.equal(load_embedding("both.pt", [tmp_path], "clip_l", 8), torch.ones(1, 8))


def test_subfolders_are_searched_and_escapes_refused(tmp_path):
    (tmp_path / "emb" / "sub").mkdir(parents=True)
    save_file({"emb_params": torch.ones(1, 8)}, str(tmp_path / "emb" / "sub" / "deep.safetensors"))
    save_file({"emb_params": torch.ones(1, 8)}, str(tmp_path / "outside.safetensors"))
    assert find_embedding_file("deep", [tmp_path / "emb"]) is not None
    assert find_embedding_file("../outside", [tmp_path / "emb"]) is None
    assert find_embedding_file(str(tmp_path / "outside"), [tmp_path / "emb"]) is None


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_payload_is_refused(tmp_path, caplog):
    marker = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"string_to_param": {"*": _Payload(marker)}}, f)
    with caplog.at_level(logging.WARNING):
        assert load_embedding("evil", [tmp_path], "clip_l", 8) is None
    assert not os.path.exists(marker)
    assert "error loading embedding evil" in caplog.text


def test_missing_is_none(tmp_path):
    assert load_embedding("nope", [tmp_path], "clip_l", 8) is None
    assert load_embedding("nope", [], "clip_l", 8) is None


@pytest.mark.parametrize("name", ["", "\x00", "a/../../b"])
def test_odd_names_do_not_crash(tmp_path, name):
    assert load_embedding(name, [tmp_path], "clip_l", 8) is None
