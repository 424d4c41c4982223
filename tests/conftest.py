import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Qwen2 with the embedded model's real tokenizer and chat template, saved as
    an HF dir: the whole train loop runs on it in seconds (real generation, real gradients)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from selfredteam.policy.embedded import embedded_model_dir

    src = embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(str(src))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig.from_pretrained(str(src))
    out = tmp_path_factory.mktemp("tiny-qwen")
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
