"""Write nodes/node_schemas.json: every node's schema, described from the node classes (graphengine.described).

    python tools/make_node_schemas.py [--check]

`graphengine validate` and `convert` register the nodes from this file, so they never import torch. Run this after
changing a node's inputs or outputs; `--check` writes nothing and exits 1 when the committed file is stale (a test
does the same)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nodes  # noqa: E402
from graphengine import NodeRegistry, RuntimeConfig  # noqa: E402
from graphengine.described import describe_registry  # noqa: E402


def schemas_text() -> str:
    registry = NodeRegistry()
    nodes.register(registry, RuntimeConfig(base_dir=ROOT))
    return json.dumps(describe_registry(registry), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    args = parser.parse_args(argv)
    text = schemas_text()
    current = nodes.SCHEMAS_FILE.read_text(encoding="utf-8") if nodes.SCHEMAS_FILE.is_file() else None
    if args.check:
        if current != text:
            print(f"{nodes.SCHEMAS_FILE} is stale: run python tools/make_node_schemas.py", file=sys.stderr)
            return 1
        return 0
    nodes.SCHEMAS_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {nodes.SCHEMAS_FILE} ({len(json.loads(text)['nodes'])} nodes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
