"""tools/train_demo_model.py end to end at toy size: every stage trains, checkpoints, evaluates and writes a
diffusers folder; a rerun skips finished stages; the decoder stage leaves the latent space (the encoder) untouched;
tools/export_demo_model.py turns the folders into single files the engine's loader reads back weight for weight."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

import export_demo_model as export  # noqa: E402
import train_demo_model as train  # noqa: E402

TOY_ARGS = ["--steps", "2", "--vae-batch", "2", "--unet-batch", "2", "--cache-scenes", "8", "--eval-prompts", "2",
            "--ckpt-every", "1", "--log-every", "1", "--no-vae-bf16"]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_build")
    threads = torch.get_num_threads()
    try:
        train.main(["--out", str(out), *TOY_ARGS])
    finally:
        torch.set_num_threads(threads)
    return out


def _eval_lines(build: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (build / stage / "eval.jsonl").read_text().splitlines()]


def test_every_stage_trains_checkpoints_and_evaluates(build):
    for stage in train.STAGES:
        state = json.loads((build / stage / "train_state.json").read_text())
        assert state["steps"] == 2 and state["resumed_from"] == 0
        assert [entry["step"] for entry in state["history"]] == [1, 2]
        assert all(entry["loss"] > 0 for entry in state["history"])
        assert (build / "ckpt" / f"{stage}.pt").is_file()
        assert [entry["step"] for entry in _eval_lines(build, stage)] == [1, 2]
    assert "kept_region_mae_255" in _eval_lines(build, "inpaint")[-1]
    assert 0.0 <= _eval_lines(build, "depth")[-1]["pos_ok_from_depth_only"] <= 1.0
    for stage in train.DOWNSTREAM_STAGES:
        for part in ("unet", "text_encoder", "vae", "tokenizer", "scheduler"):
            assert (build / stage / part).is_dir(), f"{stage}/{part} missing"


def test_decoder_stage_changes_the_decoder_and_keeps_the_latent_space(build):
    from diffusers import AutoencoderKL

    trained_vae = torch.load(build / "ckpt" / "vae.pt", weights_only=True)["ema"]["vae"]
    final = AutoencoderKL.from_pretrained(build / "vae").state_dict()
    encoder_keys = [k for k in trained_vae if k.startswith(("encoder.", "quant_conv."))]
    decoder_keys = [k for k in trained_vae if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder_keys and decoder_keys
    assert all(torch.equal(final[k], trained_vae[k]) for k in encoder_keys)
    assert any(not torch.equal(final[k], trained_vae[k]) for k in decoder_keys)
    base_vae = AutoencoderKL.from_pretrained(build / "base" / "vae").state_dict()
    assert all(torch.equal(base_vae[k], final[k]) for k in final)


def test_rerun_skips_finished_stages(build, capsys):
    threads = torch.get_num_threads()
    before = {stage: (build / stage / "train_state.json").stat().st_mtime_ns for stage in train.STAGES}
    try:
        train.main(["--out", str(build), *TOY_ARGS])
    finally:
        torch.set_num_threads(threads)
    assert {stage: (build / stage / "train_state.json").stat().st_mtime_ns for stage in train.STAGES} == before
    assert capsys.readouterr().out.count("already trained for 2 steps, skipping") == len(train.STAGES)


def test_export_writes_checkpoints_the_engine_loads_back(build, tmp_path):
    reports = export.export_build(build, tmp_path, torch.float16, verify=True)
    assert {r["stage"]: r["in_channels"] for r in reports} == {"base": 4, "inpaint": 9, "depth": 5}
    for report in reports:
        assert report["path"].is_file() and report["tensors"] > 100
