"""The small-batch linear fast path computes the same numbers and only runs where it should."""

import copy

import torch

from selfredteam.policy.cpu_fastpath import SmallBatchLinear, use_small_batch_linears
from tests.rl.tiny import tiny_model


def test_small_batch_linear_equals_linear_and_keeps_autograd():
    torch.manual_seed(0)
    ref = torch.nn.Linear(48, 80)
    fast = copy.deepcopy(ref)
    assert use_small_batch_linears(fast) == 1 and isinstance(fast, torch.nn.Linear)
    assert type(fast) is SmallBatchLinear and fast.state_dict().keys() == ref.state_dict().keys()
    for shape in [(1, 48), (4, 1, 48), (3, 48), (40, 48)]:  # 1 row, decode batch, prefill-sized
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-5)
    x = torch.randn(4, 48, requires_grad=True)
    fast(x).sum().backward()  # with autograd on, the stock kernel runs and gradients flow
    assert x.grad is not None and fast.weight.grad is not None


def test_decode_logits_unchanged_on_a_real_transformer():
    model = tiny_model()
    fast = copy.deepcopy(model)
    assert use_small_batch_linears(fast) == 15  # 2 layers x 7 projections + the LM head
    ids = torch.randint(2, 64, (6, 9))
    with torch.inference_mode():
        a = model.generate(ids, max_new_tokens=5, do_sample=False, output_logits=True,
                           return_dict_in_generate=True, pad_token_id=0)
        b = fast.generate(ids, max_new_tokens=5, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, pad_token_id=0)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), atol=1e-5, rtol=1e-5)
