"""Write the demo checkpoint's VAE as its own file, models/vae/graphengine-demo-vae.safetensors, with the engine's
own `VAESave` node (the original LDM layout), stored in fp16 like the checkpoint (so the cast loses nothing), with
the checkpoint's `graphengine.config` metadata: the demo VAE's shape is not SD's, and VAELoader reads it from there.

    python tools/extract_demo_vae.py"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from graphengine import Executor, RuntimeConfig, build_registry
from graphengine.script import Graph

ROOT = Path(__file__).resolve().parent.parent
CONFIG_KEY = "graphengine.config"
CHECKPOINT = "graphengine-demo.safetensors"
TARGET = ROOT / "models" / "vae" / "graphengine-demo-vae.safetensors"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        registry = build_registry(RuntimeConfig(base_dir=ROOT, output_dir=Path(tmp)))
        g = Graph(registry)
        _, _, vae = g.CheckpointLoaderSimple(ckpt_name=CHECKPOINT)
        g.VAESave(vae=vae, filename_prefix="vae/demo")
        result = Executor(registry).execute(g.to_api())
        if not result.ok:
            print(result.error, file=sys.stderr)
            return 1
        (saved,) = Path(tmp, "vae").glob("*.safetensors")
        with safe_open(str(ROOT / "models" / "checkpoints" / CHECKPOINT), "pt") as checkpoint:
            metadata = {"format": "pt", CONFIG_KEY: checkpoint.metadata()[CONFIG_KEY]}
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(saved).items()}
        lossy = [k for k, v in load_file(saved).items() if v.is_floating_point() and not v.half().float().equal(v)]
        if lossy:
            print(f"fp16 would change {len(lossy)} tensors (e.g. {lossy[0]}); kept in fp32", file=sys.stderr)
            tensors = load_file(saved)
        save_file(tensors, str(TARGET), metadata=metadata)
    print(f"{TARGET} ({TARGET.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
