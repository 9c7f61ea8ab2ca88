"""Suite-wide settings: offline model loading and single-threaded torch (tiny tensors run faster on one thread and
results stay bit-identical across machines)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch
except ImportError:  # the engine's own tests do not need torch
    torch = None

if torch is not None:
    torch.set_num_threads(1)
