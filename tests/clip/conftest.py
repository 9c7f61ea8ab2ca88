"""Tiny random-weight CLIP text encoders (real transformers classes, vocab 49408) and the bundled tokenizer."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKENIZER_DIR = ROOT / "nodes" / "configs" / "tokenizer"


def tiny_encoder(hidden: int = 32, layers: int = 3, projection: int | None = None, seed: int = 0):
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=49406, eos_token_id=49407,
                            pad_token_id=49407, hidden_act="quick_gelu")
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="session")
def clip_l():
    return tiny_encoder(hidden=32, seed=1)


@pytest.fixture(scope="session")
def clip_g():
    return tiny_encoder(hidden=48, projection=40, seed=2)
