#!/usr/bin/env python
"""Train the bundled demo CLIPSeg: "the red circle" -> that object's mask, on the shapes scenes.

A tiny transformers CLIPSeg (small text and vision towers, 64 px images, 8 px patches) is trained from scratch
on scenes from tools/shapes_data.py (mostly two objects, so the text must pick one; the held-out scenes'
combinations are never rendered), with queries made of the colour and shape words ("the red circle", "red
circle", "a red circle"; sometimes an object that is not there, whose target is an empty mask) and a BCE +
dice loss against the queried object's exact mask (drawn from the scene's layout, nearer objects occluding).
The result is a transformers folder OUT/NAME (config.json, fp16 model.safetensors, the shipped CLIP tokenizer
files, preprocessor_config.json) that the CLIPSeg node loads as-is.

Example:  python tools/train_demo_clipseg.py --out build/demo-clipseg --threads 2      (--steps 2: smoke run)
Training state (weights, optimizer, step) is checkpointed to OUT/ckpt.pt; rerunning the same command resumes,
and a finished run is skipped. All randomness comes from (--seed, step), so a resumed run sees the same data as
an uninterrupted one.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "tools", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import shapes_data as sd  # noqa: E402

DEFAULT_NAME = "graphengine-demo-clipseg"
TOKENIZER_DIR = REPO_ROOT / "nodes" / "configs" / "tokenizer"
CLIPSEG_SEED_SALT = 7 * 10_007  # keeps these data streams apart from the other demo trainers'
IMAGE_MEAN, IMAGE_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
TEXT_POSITIONS = 16  # queries are a few words; the node pads to the config's max_position_embeddings
QUERY_TEMPLATES = ("the {color} {shape}", "{color} {shape}", "a {color} {shape}")
TWO_OBJECT_PROBABILITY = 0.75
ABSENT_QUERY_PROBABILITY = 0.15


def demo_config():
    from transformers import CLIPSegConfig

    return CLIPSegConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": TEXT_POSITIONS,
                     "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                       "num_attention_heads": 4, "image_size": sd.IMAGE_SIZE, "patch_size": 8},
        projection_dim=32, extract_layers=[0, 1, 2], reduce_dim=32, decoder_num_attention_heads=2,
        decoder_intermediate_size=64, conditional_layer=0)


def new_model(seed: int):
    from transformers import CLIPSegForImageSegmentation

    torch.manual_seed(seed)
    return CLIPSegForImageSegmentation(demo_config())


def save_folder(model, folder: Path, metadata: dict | None = None) -> Path:
    """The transformers folder the CLIPSeg node loads: fp16 weights, tokenizer, image processor."""
    from transformers import CLIPTokenizer, ViTImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    half = type(model)(model.config)
    half.load_state_dict(model.state_dict())
    half.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    tokenizer.model_max_length = TEXT_POSITIONS
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": sd.IMAGE_SIZE, "width": sd.IMAGE_SIZE}, resample=Image.Resampling.BILINEAR,
                      image_mean=IMAGE_MEAN, image_std=IMAGE_STD).save_pretrained(folder)
    if metadata is not None:
        (folder / "training.json").write_text(json.dumps(metadata, indent=1))
    return folder


# ----------------------------------------------------------------------------- data


def object_masks(spec: sd.SceneSpec, seed: int) -> list[np.ndarray]:
    """Each object's visible pixels (float32 [64, 64] in 0..1, nearer objects occluding) as render() draws it."""
    placed = sd.layout(spec, seed)
    big = sd.IMAGE_SIZE * sd.SUPERSAMPLE
    masks = []
    for target in range(len(placed)):
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        for index, obj in sorted(enumerate(placed), key=lambda item: item[1].nearness):
            sd._draw_shape(draw, obj, 255 if index == target else 0)
        small = canvas.resize((sd.IMAGE_SIZE, sd.IMAGE_SIZE), Image.Resampling.BOX)
        masks.append(np.asarray(small, dtype=np.float32) / 255.0)
    return masks


def query(obj: sd.ShapeSpec, rng: random.Random) -> str:
    return rng.choice(QUERY_TEMPLATES).format(color=obj.color, shape=obj.shape)


def absent_object(spec: sd.SceneSpec, rng: random.Random) -> sd.ShapeSpec:
    present = {(o.color, o.shape) for o in spec.objects}
    while True:
        # mostly a near miss (a present colour or shape), so both words matter
        base = rng.choice(spec.objects)
        color = base.color if rng.random() < 0.5 else rng.choice(list(sd.OBJECT_COLORS))
        shape = rng.choice(sd.SHAPES) if color == base.color else base.shape
        if (color, shape) not in present:
            return sd.ShapeSpec(color, shape)


def pixel_values(images: list) -> torch.Tensor:
    array = np.stack([np.asarray(i, dtype=np.float32) / 255.0 for i in images])
    mean, std = torch.tensor(IMAGE_MEAN), torch.tensor(IMAGE_STD)
    return ((torch.from_numpy(array) - mean) / std).permute(0, 3, 1, 2).contiguous()


def training_batch(rng: random.Random, batch: int, held_out: list) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    images, texts, targets = [], [], []
    for _ in range(batch):
        two = rng.random() < TWO_OBJECT_PROBABILITY
        while True:
            spec = sd.random_scene(rng, two_objects=two)
            if not sd.is_held_out(spec, held_out):
                break
        seed = rng.randrange(2**31)
        image, _ = sd.render(spec, seed)
        masks = object_masks(spec, seed)
        if rng.random() < ABSENT_QUERY_PROBABILITY:
            texts.append(query(absent_object(spec, rng), rng))
            targets.append(np.zeros_like(masks[0]))
        else:
            pick = rng.randrange(len(spec.objects))
            texts.append(query(spec.objects[pick], rng))
            targets.append(masks[pick])
        images.append(image)
    return pixel_values(images), texts, torch.from_numpy(np.stack(targets))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft dice (dice only over queries whose object is there)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    present = flat.sum(1) > 0
    if not present.any():
        return bce
    inter = (probs * flat).sum(1)
    dice = 1 - (2 * inter + 1) / (probs.sum(1) + flat.sum(1) + 1)
    return bce + dice[present].mean()


def iou(prediction: np.ndarray, target: np.ndarray, level: float = 0.5) -> float:
    a, b = prediction > level, target > level
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ----------------------------------------------------------------------------- training


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, progress))))


def train(args) -> dict:
    from transformers import CLIPTokenizer

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    model = new_model(args.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    ckpt_path, start, history = out / "ckpt.pt", 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        print(f"[clipseg] resumed from {ckpt_path} at step {start}", flush=True)
    held_out = sd.held_out_scenes()
    window, t_window, started = [], time.perf_counter(), time.perf_counter()
    for step in range(start, args.steps):
        rng = random.Random((args.seed * 1_000_003 + CLIPSEG_SEED_SALT + step) % (2**62))
        pixels, texts, target = training_batch(rng, args.batch, held_out)
        tokens = tokenizer(texts, padding="max_length", max_length=TEXT_POSITIONS, truncation=True,
                           return_tensors="pt")
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        logits = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                       pixel_values=pixels).logits.reshape(target.shape)
        loss = segmentation_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window.append(loss.item())
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            seconds = (time.perf_counter() - t_window) / len(window)
            history.append({"step": done, "loss": round(sum(window) / len(window), 4), "s_per_step": round(seconds, 3)})
            print(f"[clipseg] step {done}/{args.steps} loss {history[-1]['loss']:.4f} {seconds:.3f} s/step", flush=True)
            window, t_window = [], time.perf_counter()
        if done % args.ckpt_every == 0 or done == args.steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "history": history}, tmp)
            os.replace(tmp, ckpt_path)
            record = {"trainer": "tools/train_demo_clipseg.py", "step": done, "steps": args.steps,
                      "seed": args.seed, "batch": args.batch, "lr": args.lr, "history": history[-3:]}
            save_folder(model.eval(), out / args.name, record)
            model.train()
    elapsed = time.perf_counter() - started
    info = {"steps": args.steps, "resumed_from": start, "seconds_this_run": round(elapsed, 1), "history": history}
    (out / "train_state.json").write_text(json.dumps(info, indent=1))
    print(f"[clipseg] done: {args.steps - start} steps in {elapsed / 60:.1f} min -> {out / args.name}", flush=True)
    return info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "demo-clipseg")
    parser.add_argument("--name", default=DEFAULT_NAME, help="folder name of the exported model")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ckpt-every", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--install", action="store_true",
                        help="copy the finished folder to models/clipseg/ in the repository")
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    state_file = args.out.resolve() / "train_state.json"
    if state_file.exists() and json.loads(state_file.read_text())["steps"] == args.steps:
        print(f"[clipseg] already trained for {args.steps} steps, skipping", flush=True)
        info = None
    else:
        info = train(args)
    if args.install:
        target = REPO_ROOT / "models" / "clipseg" / args.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(args.out.resolve() / args.name, target)
    return info


if __name__ == "__main__":
    main()
