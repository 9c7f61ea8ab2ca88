"""Run the ComfyUI-compatible server: `python server.py [--listen 127.0.0.1] [--port 8188] …`."""

import sys

from graphengine.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
