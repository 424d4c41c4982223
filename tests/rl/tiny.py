"""A tiny randomly initialised Qwen2 model: real transformer maths in milliseconds."""

from types import SimpleNamespace

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).eval()


TOKENIZER = SimpleNamespace(pad_token_id=0, eos_token_id=1)
