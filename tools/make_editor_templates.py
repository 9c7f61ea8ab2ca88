"""Write the editor's template browser files: workflows/editor_templates/{index.json, <name>.json, <name>-1.webp}.

    python tools/make_editor_templates.py [--check] [--no-thumbnails]

Each template is one of workflows/*.json (API format) drawn as a UI workflow (graphengine.ui_build), with a thumbnail
rendered by running that workflow through the engine with the bundled models (the first image it saves, as a small
webp). `--check` writes nothing and exits 1 when a committed index or workflow file differs from what would be
written (thumbnails are not compared: they are pictures, not text)."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphengine import NodeRegistry, RuntimeConfig, build_registry  # noqa: E402
from graphengine.ui_build import api_to_ui  # noqa: E402

OUT = ROOT / "workflows" / "editor_templates"
THUMBNAIL_SIDE = 128
# (category title, icon, [(template name, workflow file stem, title, description)]), in the browser's order
CATEGORIES: list[tuple[str, str, list[tuple[str, str, str, str]]]] = [
    ("Basics", "icon-[lucide--image]", [
        ("graphengine_txt2img", "txt2img", "Text to Image",
         "Generate an image from a text prompt with the bundled demo model (64×64 shapes)."),
        ("graphengine_img2img", "img2img", "Image to Image",
         "Repaint a sample input image after a prompt; denoise sets how much changes."),
        ("graphengine_variations", "variations", "Variations",
         "Several variations of one prompt in a single batch."),
        ("graphengine_hires_fix", "hires_fix", "Hires Fix",
         "Generate small, upscale the latent, and refine it with a second sampling pass."),
        ("graphengine_area_composition", "area_composition", "Area Composition",
         "Different prompts for different areas of one image."),
    ]),
    ("Inpaint", "icon-[lucide--paintbrush]", [
        ("graphengine_inpaint", "inpaint", "Inpaint",
         "Repaint the masked part of a sample image with the base model (Set Latent Noise Mask)."),
        ("graphengine_inpaint_model", "inpaint_model", "Inpaint (inpaint model)",
         "Repaint a masked region with the 9-channel demo inpaint model (VAE Encode for Inpaint)."),
        ("graphengine_inpaint_model_conditioning", "inpaint_model_conditioning", "Inpaint Model Conditioning",
         "The inpaint model driven through InpaintModelConditioning."),
        ("graphengine_outpaint", "outpaint", "Outpaint",
         "Extend a sample image past its borders with the inpaint model."),
    ]),
    ("Depth", "icon-[lucide--layers]", [
        ("graphengine_depth2img", "depth2img", "Depth to Image",
         "A depth map places the objects: the 5-channel demo depth model with ConditioningSetDepth."),
        ("graphengine_controlnet", "controlnet", "ControlNet (depth)",
         "A depth map places the shapes through the bundled demo ControlNet (ControlNetApplyAdvanced)."),
    ]),
    ("LoRA", "icon-[lucide--sparkles]", [
        ("graphengine_lora", "lora", "LoRA",
         "Apply the bundled demo LoRA (objects in the corners) with LoraLoader."),
    ]),
]


def index_entries() -> list[dict[str, Any]]:
    """The index.json the editor's template browser reads (a list of categories)."""
    return [{"moduleName": "default", "title": title, "type": "image", "category": "graphengine", "icon": icon,
             "templates": [{"name": name, "title": label, "description": description, "mediaType": "image",
                            "mediaSubtype": "webp", "tags": [title], "models": ["graphengine-demo"],
                            "io": {"inputs": [], "outputs": [{"mediaType": "image"}]}}
                           for name, _stem, label, description in templates]}
            for title, icon, templates in CATEGORIES]


def ui_workflow(stem: str, registry: NodeRegistry) -> dict[str, Any]:
    prompt = json.loads((ROOT / "workflows" / f"{stem}.json").read_text())
    return api_to_ui(prompt, registry)


def thumbnail(stem: str, registry: NodeRegistry, output_dir: Path) -> bytes:
    """The first image the workflow saves, as a small webp."""
    from PIL import Image

    from graphengine.executor import Executor
    from graphengine.validation import validate_prompt

    prompt = json.loads((ROOT / "workflows" / f"{stem}.json").read_text())
    result = Executor(registry).execute(validate_prompt(prompt, registry))
    if not result.ok:
        raise RuntimeError(f"{stem}: {result.error}")
    image = next(item for ui in result.outputs.values() for item in ui.get("images", []))
    path = output_dir / image.get("subfolder", "") / image["filename"]
    with Image.open(path) as picture:
        small = picture.convert("RGB").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    small.save(buffer, format="WEBP", quality=90, method=6)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--no-thumbnails", action="store_true")
    parser.add_argument("--redo-thumbnails", action="store_true", help="re-render thumbnails that exist already")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = RuntimeConfig(base_dir=ROOT, output_dir=Path(tmp), temp_dir=Path(tmp))
        registry = build_registry(config)
        files = {"index.json": json.dumps(index_entries(), indent=2) + "\n"}
        for _title, _icon, templates in CATEGORIES:
            for name, stem, _label, _description in templates:
                files[f"{name}.json"] = json.dumps(ui_workflow(stem, registry), indent=1) + "\n"
        if args.check:
            stale = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text]
            for name in stale:
                print(f"differs: {OUT / name}")
            return 1 if stale else 0
        OUT.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (OUT / name).write_text(text)
        if not args.no_thumbnails:
            for _title, _icon, templates in CATEGORIES:
                for name, stem, _label, _description in templates:
                    if (OUT / f"{name}-1.webp").is_file() and not args.redo_thumbnails:
                        continue
                    (OUT / f"{name}-1.webp").write_bytes(thumbnail(stem, registry, Path(tmp)))
                    print(f"wrote {name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
