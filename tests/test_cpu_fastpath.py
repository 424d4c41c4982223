"""The CPU fast paths: `W @ x^T` and oneDNN compute the same numbers, fp16 weights nearly the same,
and each only runs where it should."""

import copy

import pytest
import torch

import selfredteam.policy.cpu_fastpath as cpu_fastpath
from selfredteam.policy.cpu_fastpath import (
    ONEDNN_LINEAR,
    SmallBatchLinear,
    fp16_gemm_available,
    frozen_linear,
    use_small_batch_linears,
    uses_fp16_weights,
)
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


def greedy(model, ids):
    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=5, do_sample=False, output_logits=True,
                              return_dict_in_generate=True, pad_token_id=0)


def test_decode_logits_unchanged_on_a_real_transformer():
    model = tiny_model()
    fast = copy.deepcopy(model)
    assert use_small_batch_linears(fast) == 15  # 2 layers x 7 projections + the LM head
    ids = torch.randint(2, 64, (6, 9))
    a, b = greedy(model, ids), greedy(fast, ids)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), atol=1e-5, rtol=1e-5)


needs_fbgemm = pytest.mark.skipif(not fp16_gemm_available(), reason="fbgemm fp16 GEMM is x86-only")


@needs_fbgemm
def test_fp16_weights_close_to_fp32_and_only_for_frozen_inference():
    torch.manual_seed(0)
    ref = torch.nn.Linear(48, 80)
    fast = copy.deepcopy(ref).requires_grad_(False)
    use_small_batch_linears(fast, fp16_weights=True)
    x = torch.randn(8, 48)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=2e-3, rtol=2e-3)
        assert not torch.equal(fast(x), ref(x))  # the fp16 path did run
        assert fast._fp16 is not None
        prefill = torch.randn(40, 48)  # more than 32 rows: an exact fp32 kernel (frozen_linear)
        torch.testing.assert_close(fast(prefill), ref(prefill), atol=1e-5, rtol=1e-5)
    trainable = copy.deepcopy(ref)
    use_small_batch_linears(trainable, fp16_weights=True)
    with torch.no_grad():  # a weight that requires grad is never packed: exact fp32
        torch.testing.assert_close(trainable(x), ref(x), atol=1e-5, rtol=1e-5)
    assert trainable._fp16 is None


@needs_fbgemm
def test_fp16_pack_follows_weight_changes_and_is_not_copied():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 24).requires_grad_(False)
    use_small_batch_linears(lin, fp16_weights=True)
    x = torch.randn(4, 16)
    with torch.no_grad():
        lin(x)
        lin.weight.add_(1.0)  # in place through the parameter: version counter moves
        torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias, atol=5e-3, rtol=2e-3)
        lin.weight.data = torch.randn(24, 16)  # a new tensor
        torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias, atol=5e-3, rtol=2e-3)
    twin = copy.deepcopy(lin)
    assert twin._fp16 is None and lin._fp16 is not None


@needs_fbgemm
def test_fp16_decode_close_on_a_real_transformer():
    model = tiny_model().requires_grad_(False)
    fast = copy.deepcopy(model)
    use_small_batch_linears(fast, fp16_weights=True)
    assert uses_fp16_weights(fast) and not uses_fp16_weights(model)
    ids = torch.randint(2, 64, (6, 9))
    a, b = greedy(model, ids), greedy(fast, ids)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), atol=2e-3, rtol=2e-3)


@needs_fbgemm
def test_bf16_model_decodes_through_the_fp16_pack_and_keeps_bf16_elsewhere():
    """bf16 models (auto on CPUs with native bf16): decode steps read the fp16 pack with fp32
    products, prefill and autograd keep the bf16 kernels; without fp16 weights nothing switches."""
    model = tiny_model().to(torch.bfloat16).requires_grad_(False)
    assert use_small_batch_linears(copy.deepcopy(model)) == 0  # W @ x^T is an fp32-only path
    fast = copy.deepcopy(model)
    assert use_small_batch_linears(fast, fp16_weights=True) == 15 and uses_fp16_weights(fast)
    lin, ref = fast.lm_head, model.lm_head
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        out = lin(x)
        exact = x.float() @ ref.weight.float().T  # what the fp16 path computes, up to fp16/bf16 rounding
        assert out.dtype == torch.bfloat16 and lin._fp16 is not None
        torch.testing.assert_close(out.float(), exact, atol=2e-2, rtol=2**-7)
        prefill = torch.randn(40, 32, dtype=torch.bfloat16)
        assert torch.equal(lin(prefill), ref(prefill))  # > 32 rows: the stock bf16 kernel
    ids = torch.randint(2, 64, (6, 9))
    a, b = greedy(model, ids), greedy(fast, ids)
    torch.testing.assert_close(torch.stack(a.logits).float(), torch.stack(b.logits).float(), atol=5e-2, rtol=2**-6)


def test_a_switched_linear_moved_off_the_cpu_runs_the_stock_kernel():
    """A model loaded on the CPU (its layers switched) and then moved to an accelerator keeps the
    class: `eval --model RUN` merges the adapter on the CPU and samples on CUDA, where fbgemm's fp16
    pack does not exist (it raised there, 2026-12-04). Off the CPU the forward is nn.Linear's."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    model.requires_grad_(False)
    use_small_batch_linears(model, fp16_weights=True)
    model.to("meta")
    with torch.no_grad():
        out = model(torch.zeros(4, 16, device="meta"))
    assert out.shape == (4, 8) and out.device.type == "meta"


needs_onednn = pytest.mark.skipif(not ONEDNN_LINEAR, reason="oneDNN's linear is used on x86 builds only")


@pytest.fixture
def onednn_calls(monkeypatch):
    """How many products went through oneDNN."""
    calls = []
    real = cpu_fastpath._onednn_linear
    monkeypatch.setattr(cpu_fastpath, "_onednn_linear", lambda *a: calls.append(1) or real(*a))
    return calls


@needs_onednn
def test_frozen_linear_is_linear_through_onednn_with_the_input_gradient(onednn_calls):
    torch.manual_seed(0)
    w, b = torch.randn(80, 48) * 0.1, torch.randn(80)
    x = torch.randn(3, 40, 48, requires_grad=True)
    y = frozen_linear(x, w, b)
    assert len(onednn_calls) == 1
    x_ref = x.detach().clone().requires_grad_()
    y_ref = torch.nn.functional.linear(x_ref, w, b)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)  # float summation order only
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        frozen_linear(x, w)
    assert len(onednn_calls) == 2
    trained = w.clone().requires_grad_()  # full fine-tuning: the stock kernel, the weight gets its gradient
    frozen_linear(x, trained).sum().backward()
    assert trained.grad is not None
    frozen_linear(x.detach().bfloat16(), w.bfloat16())  # bf16: the stock (native) kernel
    assert len(onednn_calls) == 2


def test_frozen_linear_without_onednn_is_the_stock_kernel(monkeypatch):
    monkeypatch.setattr(cpu_fastpath, "ONEDNN_LINEAR", False)
    x, w, b = torch.randn(40, 48), torch.randn(80, 48), torch.randn(80)
    assert torch.equal(frozen_linear(x, w, b), torch.nn.functional.linear(x, w, b))


@needs_onednn
def test_prefill_and_learner_passes_on_a_real_transformer_match_the_stock_kernel(onednn_calls, monkeypatch):
    """A frozen model's many-row forwards (prefill, the learner's passes) through oneDNN give the
    stock kernel's logits and input gradients up to float summation order."""
    torch.manual_seed(0)
    model = tiny_model().requires_grad_(False)
    use_small_batch_linears(model)
    embeds = model.get_input_embeddings()(torch.randint(2, 64, (4, 12)))

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        x = embeds.detach().clone().requires_grad_()
        logits = model(inputs_embeds=x).logits
        logits.logsumexp(-1).sum().backward()
        return logits.detach(), x.grad

    fast = run()
    assert len(onednn_calls) == 15  # 2 layers x 7 projections + the LM head, 48 rows each
    monkeypatch.setattr(cpu_fastpath, "ONEDNN_LINEAR", False)
    stock = run()
    assert len(onednn_calls) == 15
    for a, b in zip(fast, stock):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
