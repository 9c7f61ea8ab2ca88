"""Write workflows/<name>.json (API format) from the templates with their defaults and sample prompts.

    python tools/generate_workflows.py [--out workflows] [--check]

The graphs only need the node schemas, not the models, so this runs without any checkpoint present.
`--check` writes nothing and exits 1 if a committed file differs from what would be generated."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphengine import NodeRegistry, RuntimeConfig, build_registry  # noqa: E402
from workflows.templates import TEMPLATES  # noqa: E402

# file stem -> (template name, parameters besides the template's defaults)
WORKFLOWS: dict[str, tuple[str, dict[str, Any]]] = {
    "txt2img": ("txt2img", {"prompt": "a red circle on the left on a blue background"}),
    "lora": ("lora", {"prompt": "a red circle in the top left corner on a blue background"}),
    "img2img": ("img2img", {"prompt": "a large yellow circle in the center on a blue background"}),
    "inpaint": ("inpaint", {
        "prompt": "a red circle on the left and a green triangle on the right on a blue background"}),
    "inpaint_model": ("inpaint_model", {
        "prompt": "a red circle on the left and a green triangle on the right on a blue background"}),
    "inpaint_model_conditioning": ("inpaint_model", {
        "prompt": "a red circle on the left and a white circle on the right on a blue background",
        "method": "conditioning", "filename_prefix": "inpaint_model_conditioning"}),
    "clipseg_inpaint": ("clipseg_inpaint", {
        "prompt": "a green square on the left and a yellow square on the right on a blue background",
        "text": "the red circle"}),
    "outpaint": ("outpaint", {
        "prompt": "a large green square on the left and a small red circle on the right on a white background"}),
    "depth2img": ("depth2img", {
        "prompt": "a small green square at the top and a large yellow circle at the bottom on a purple background"}),
    "controlnet": ("controlnet", {"prompt": "a large yellow circle and a small green square on a purple background"}),
    "hires_fix": ("hires_fix", {"prompt": "a large orange triangle in the center on a black background"}),
    "hires_fix_model": ("hires_fix_model", {"prompt": "a large orange triangle in the center on a black background"}),
    "variations": ("variations", {"prompt": "a small purple square at the top on a yellow background"}),
    "variations_seeds": ("variations", {"prompt": "a small purple square at the top on a yellow background",
                                        "mode": "seeds", "count": 3, "filename_prefix": "variations_seeds"}),
    "area_composition": ("area_composition", {
        "prompt": "a red circle on the left and a yellow square on the right on a blue background",
        "regions": ["a large red circle in the center on a blue background",
                    "a large yellow square in the center on a blue background"]}),
    "unconditional": ("unconditional", {}),
}


def generate(registry: NodeRegistry) -> dict[str, dict[str, Any]]:
    """File stem -> API prompt, for every entry of WORKFLOWS."""
    return {stem: TEMPLATES[name](registry=registry, **params).to_api() for stem, (name, params) in WORKFLOWS.items()}


def render(prompt: dict[str, Any]) -> str:
    return json.dumps(prompt, indent=2, ensure_ascii=False) + "\n"


def stale_files(out: Path, registry: NodeRegistry) -> list[str]:
    """Names of workflow files that are missing or differ from the generated text, plus unknown extra files."""
    expected = {f"{stem}.json": render(prompt) for stem, prompt in generate(registry).items()}
    stale = [name for name, text in expected.items()
             if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text]
    extra = [p.name for p in out.glob("*.json") if p.name not in expected]
    return sorted(stale + extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "workflows")
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    registry = build_registry(RuntimeConfig(base_dir=ROOT))
    if args.check:
        stale = stale_files(args.out, registry)
        for name in stale:
            print(f"out of date: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, prompt in generate(registry).items():
        path = args.out / f"{stem}.json"
        path.write_text(render(prompt), encoding="utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
