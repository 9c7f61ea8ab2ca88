#!/usr/bin/env python
"""Export the trained demo model (diffusers folders written by train_demo_model.py) as self-describing
single-file checkpoints the engine's CheckpointLoaderSimple loads with no other file.

    python tools/export_demo_model.py [--build build/demo] [--out models/checkpoints] [--dtype float16]

Stage folder -> file: base -> graphengine-demo.safetensors, inpaint -> graphengine-demo-inpaint.safetensors,
depth -> graphengine-demo-depth.safetensors. Every file holds a UNet, the VAE and the CLIP text encoder
(inpaint/depth use the VAE and text encoder they were fine-tuned with, which are the base's). After writing,
each file is loaded back through the engine's loader and every weight is compared with the dtype-rounded
original; the loader's latent scale must equal the VAE config's scaling_factor.

`write_untrained_build` writes random-weight stage folders of the same architecture (with a given trained VAE):
the untrained baseline of bench/demo_quality.py, and a stand-in for developing against before training ends.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nodes.models.single_file import load_checkpoint, save_checkpoint  # noqa: E402

STAGE_FILES = {
    "base": "graphengine-demo.safetensors",
    "inpaint": "graphengine-demo-inpaint.safetensors",
    "depth": "graphengine-demo-depth.safetensors",
}
STAGE_IN_CHANNELS = {"base": 4, "inpaint": 9, "depth": 5}
DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Buffers transformers rebuilds itself; they are not weights of the file.
_IGNORED_KEYS = ("position_ids",)


@dataclass
class StageModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module


def _quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def _component_folder(build: Path, stage: str, component: str) -> Path:
    """The stage's own copy of a component, else the base stage's (inpaint/depth reuse base's VAE and encoder)."""
    for folder in (build / stage / component, build / "base" / component, build / component):
        if (folder / "config.json").is_file():
            return folder
    raise SystemExit(f"no {component}/config.json for stage {stage} under {build}")


def load_stage(build: Path, stage: str) -> StageModels:
    """The fp32 UNet, VAE and text encoder of one trained stage folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(build / stage / "unet", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(_component_folder(build, stage, "vae"), torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(_component_folder(build, stage, "text_encoder"), dtype=torch.float32)
    return StageModels(unet.eval(), vae.eval(), text.eval())


def present_stages(build: Path) -> list[str]:
    return [stage for stage in STAGE_FILES if (build / stage / "unet" / "config.json").is_file()]


def export_stage(models: StageModels, path: Path, dtype: torch.dtype, stage: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"graphengine.demo_stage": stage, "graphengine.demo_source": "tools/train_demo_model.py"}
    return save_checkpoint(path, models.unet, models.vae, [models.text_encoder], family="custom", dtype=dtype,
                           prediction_type="epsilon", metadata=metadata)


def _compare(name: str, original: torch.nn.Module, loaded: torch.nn.Module, dtype: torch.dtype) -> int:
    """Number of tensors compared; raises if a weight is missing or differs from the dtype-rounded original."""
    want = {k: v for k, v in original.state_dict().items() if not k.endswith(_IGNORED_KEYS)}
    got = {k: v for k, v in loaded.state_dict().items() if not k.endswith(_IGNORED_KEYS)}
    if set(want) != set(got):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise AssertionError(f"{name}: key mismatch after reload: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, value in want.items():
        expected = value.to(dtype).float() if value.is_floating_point() else value
        if not torch.equal(got[key].float() if value.is_floating_point() else got[key], expected):
            raise AssertionError(f"{name}: weight {key} differs after the round trip")
    return len(want)


def verify_checkpoint(path: Path, models: StageModels, dtype: torch.dtype) -> dict:
    """Reload through the engine's loader; every weight must equal the dtype-rounded original."""
    loaded = load_checkpoint(path, dtype=torch.float32)
    if loaded.family.name != "custom" or loaded.prediction_type != "epsilon":
        raise AssertionError(f"{path.name}: loaded as {loaded.family.name}/{loaded.prediction_type}")
    expected_scale = float(models.vae.config.scaling_factor)
    if loaded.latent_scale_factor != expected_scale:
        raise AssertionError(f"{path.name}: latent scale {loaded.latent_scale_factor} != VAE scaling_factor "
                             f"{expected_scale}")
    if len(loaded.text_encoders) != 1:
        raise AssertionError(f"{path.name}: expected one text encoder, got {len(loaded.text_encoders)}")
    count = _compare("unet", models.unet, loaded.unet, dtype)
    count += _compare("vae", models.vae, loaded.vae, dtype)
    count += _compare("text_encoder", models.text_encoder, loaded.text_encoders[0].model, dtype)
    return {"tensors": count, "latent_scale_factor": loaded.latent_scale_factor,
            "in_channels": int(loaded.unet.config.in_channels)}


def export_build(build: Path, out: Path, dtype: torch.dtype = torch.float16, verify: bool = True) -> list[dict]:
    """Export every stage present under `build` into `out`; returns one report per written file."""
    stages = present_stages(build)
    if not stages:
        raise SystemExit(f"no trained stage folder (base/inpaint/depth with unet/) under {build}")
    reports = []
    for stage in stages:
        models = load_stage(build, stage)
        path = export_stage(models, out / STAGE_FILES[stage], dtype, stage)
        report = {"stage": stage, "path": path, "megabytes": path.stat().st_size / 1e6}
        if verify:
            report.update(verify_checkpoint(path, models, dtype))
        reports.append(report)
    return reports


def untrained_stage(vae: torch.nn.Module, stage: str = "base", seed: int = 0) -> StageModels:
    """Random UNet and text encoder of the demo architecture (the train script's builders) with the given VAE:
    the untrained baseline. The same seed gives the same text encoder for every stage."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import train_demo_model as train

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    text_encoder = train.build_text_encoder().eval()
    torch.manual_seed(seed + STAGE_IN_CHANNELS[stage])
    unet = train.build_unet(STAGE_IN_CHANNELS[stage]).eval()
    torch.random.set_rng_state(generator_state)
    return StageModels(unet, vae, text_encoder)


def write_untrained_build(build: Path, vae_folder: Path, stages=("base",), seed: int = 0) -> Path:
    """Stage folders (unet/, text_encoder/, vae/) of `untrained_stage` models: a stand-in for the trained build."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_folder, torch_dtype=torch.float32)
    for stage in stages:
        models = untrained_stage(vae, stage, seed)
        for name in ("unet", "text_encoder", "vae"):
            getattr(models, name).save_pretrained(build / stage / name)
    return build


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=REPO_ROOT / "build" / "demo")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "checkpoints")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    parser.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _quiet_libraries()
    for report in export_build(args.build, args.out, DTYPES[args.dtype], verify=not args.no_verify):
        checked = ""
        if "tensors" in report:
            checked = (f", reload OK: {report['tensors']} tensors equal, in_channels {report['in_channels']}, "
                       f"latent scale {report['latent_scale_factor']:.6g}")
        print(f"{report['stage']:8s} -> {report['path']} ({report['megabytes']:.2f} MB {args.dtype}){checked}")


if __name__ == "__main__":
    main()
