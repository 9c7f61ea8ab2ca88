"""Run the workflows in tools/realpacks/ against real ComfyUI custom node packs checked out in a folder.

    python tools/try_real_packs.py /path/to/packs [--only NAME]

Fetches nothing: check the packs out yourself (the README's "Custom node packs" table names repositories and
commits). Each workflow runs as `graphengine run … --custom-nodes FOLDER` in its own process, with pip pointed at
nothing, since some packs run `pip install` when imported. Exit status 1 if a workflow whose pack is present fails."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "tools" / "realpacks"
# workflow -> the pack folder it needs
PACK_OF = {
    "custom_scripts": "ComfyUI-Custom-Scripts",
    "logic": "ComfyUI-Logic",
    "derfuu_math": "Derfuu_ComfyUI_ModdedNodes",
    "dynamic_thresholding": "sd-dynamic-thresholding",
    "image_resize": "image-resize-comfyui",
    "ib_pil_roundtrip": "ComfyUI_Ib_CustomNodes",  # on PyPI: comfyui-ib-customnodes
}
# pip may neither download nor install: packs that install their requirements on import fail instead
NO_PIP = {"PIP_NO_INDEX": "1", "PIP_DRY_RUN": "1", "PIP_FIND_LINKS": "", "HF_HUB_OFFLINE": "1"}


def run_workflow(workflow: Path, packs: Path, output_dir: Path) -> tuple[bool, str]:
    env = {**os.environ, **NO_PIP, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "graphengine", "run", str(workflow), "--custom-nodes", str(packs),
               "--output-dir", str(output_dir), "--base-dir", str(ROOT), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    written = [line for line in lines if line.endswith(".png") and Path(line).is_file()]
    if done.returncode == 0:
        return True, ", ".join(Path(p).name for p in written) or "ran"
    errors = [line for line in lines if line.lower().startswith("error")]
    return False, (errors or lines or ["no output"])[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packs", type=Path, help="folder holding checked-out packs (one folder per pack)")
    parser.add_argument("--only", action="append", help="run only this workflow (repeatable)")
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="realpacks-") as output:
        for name, pack in PACK_OF.items():
            if args.only and name not in args.only:
                continue
            if not (args.packs / pack).is_dir():
                print(f"{name:22} skipped: {pack} is not in {args.packs}")
                continue
            ok, detail = run_workflow(WORKFLOWS / f"{name}.json", args.packs, Path(output))
            failed += not ok
            print(f"{name:22} {'works' if ok else 'FAILS'}: {detail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
