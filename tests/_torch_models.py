"""Small torch models shared by the calibrate and distill tests (no test in here)."""

from __future__ import annotations

import pytest
import torch


def tiny_bert(layers: int = 2):
    """A BertModel from a config (no download): vocabulary 100, hidden 32, FFN 32 -> 64 -> 32."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def bert_batches(n: int, seed: int, batch: int = 4, tokens: int = 12) -> list[dict]:
    """``n`` tokenizer-like dict batches of random ids, full attention masks."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 100, (batch, tokens), generator=g),
             "attention_mask": torch.ones(batch, tokens, dtype=torch.long)} for _ in range(n)]
