import sys
from pathlib import Path

import torch

# `tests.samplers.*` helpers are imported by package path; make the repo root importable
# also when pytest is started as plain `pytest` (not `python -m pytest`).
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The golden replays use tiny tensors; torch's intra-op thread pool only adds contention on
# a shared 2-core machine (about 10x slower).  Results are thread-count independent (golden §7).
torch.set_num_threads(1)
