"""Loading diffusers-format folders offline (HF_HUB_OFFLINE=1 is set in conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes.models import (
    FAMILIES, ModelFileError, load_checkpoint, load_diffusers_folder, load_tokenizer, save_checkpoint,
)
from nodes.models.families import read_config

from .tiny import assert_same_weights, demo_models, tiny_family_models


PIPELINE = "StableDiffusionPipeline"


def _save_folder(root: Path, unet, vae, encoders, subfolders, pipeline: str, prediction: str) -> Path:
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    index = {"_class_name": pipeline, "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    for sub, model in zip(subfolders, encoders):
        model.save_pretrained(root / sub)
        index[sub] = ["transformers", type(model).__name__]
    load_tokenizer().save_pretrained(root / "tokenizer")
    scheduler = dict(read_config(FAMILIES["sd15"].config_dir, "scheduler"), prediction_type=prediction)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_sd15_folder(tmp_path):
    unet, vae, encoders = tiny_family_models("sd15")
    folder = _save_folder(tmp_path / "pipe", unet, vae, encoders, ["text_encoder"], PIPELINE, "epsilon")
    loaded = load_diffusers_folder(folder)
    assert loaded.family.name == "sd15" and loaded.prediction_type == "epsilon"
    assert loaded.latent_scale_factor == pytest.approx(0.18215)
    assert_same_weights(unet, loaded.unet)
    assert_same_weights(vae, loaded.vae)
    assert_same_weights(encoders[0], loaded.text_encoders[0].model)
    assert loaded.tokenizers[0]("a cat").input_ids == [49406, 320, 2368, 49407]
    assert load_checkpoint(folder).family.name == "sd15"  # a folder path goes to the folder loader

    # the folder's configs, used verbatim for a single file via config_hint
    single = save_checkpoint(tmp_path / "single.safetensors", unet, vae, encoders, "sd15")
    hinted = load_checkpoint(single, config_hint=folder)
    assert hinted.unet.config.block_out_channels == unet.config.block_out_channels
    assert_same_weights(unet, hinted.unet)
    assert_same_weights(encoders[0], hinted.text_encoders[0].model)
    with pytest.raises(ModelFileError, match="config hint"):
        load_checkpoint(single, config_hint=tmp_path / "nowhere")


def test_sd2_v_folder_reads_last_layer(tmp_path):
    unet, vae, encoders = tiny_family_models("sd2")
    folder = _save_folder(tmp_path / "pipe", unet, vae, encoders, ["text_encoder"], PIPELINE, "v_prediction")
    loaded = load_diffusers_folder(folder)
    assert (loaded.family.name, loaded.prediction_type) == ("sd2_v", "v_prediction")
    assert loaded.text_encoders[0].spec.layer == -1  # diffusers SD2 text encoders already end at the penultimate block


def test_demo_folder_is_custom(tmp_path):
    unet, vae, text = demo_models()
    folder = _save_folder(tmp_path / "demo", unet, vae, [text], ["text_encoder"], "StableDiffusionPipeline", "epsilon")
    loaded = load_diffusers_folder(folder)
    assert loaded.family.name == "custom"
    assert loaded.latent_scale_factor == pytest.approx(0.5232)
    assert_same_weights(unet, loaded.unet)


def test_not_a_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="model_index.json"):
        load_diffusers_folder(tmp_path / "empty")
