"""benchmarks/step_flops.py: products and attention counted per phase and kernel, the floor from rates."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_flops import ATTENTION, FP16_PACK, FlopTally, floor_seconds, table  # noqa: E402

from selfredteam.policy.cpu_fastpath import fp16_gemm_available, use_small_batch_linears  # noqa: E402


def test_products_counted_per_phase_and_kernel():
    lin = torch.nn.Linear(64, 32, bias=True)
    tally = FlopTally()
    x = torch.randn(40, 64, requires_grad=True)
    with tally:
        tally.enter("step")
        tally.enter("learn_fwd_bwd")
        lin(x).sum().backward()  # forward addmm, backward: grad of x and of the weight
        tally.leave()
        tally.enter("learn_ref_logprob")
        with torch.no_grad():
            lin(x)
        tally.leave()
        tally.leave()
    product = 2 * 40 * 64 * 32
    assert tally.flops[(1, "learn_fwd_bwd", "float32 GEMM")] == 3 * product
    assert tally.flops[(1, "learn_ref_logprob", "float32 GEMM")] == product


def test_attention_counted():
    q = torch.randn(2, 4, 16, 8)
    tally = FlopTally()
    with tally:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert tally.flops[(0, "outside", ATTENTION)] == 4 * 2 * 4 * 16 * 16 * 8  # q k^T and p v, the mask not halved


@pytest.mark.skipif(not fp16_gemm_available(), reason="fbgemm's fp16 GEMM is x86-only")
def test_fp16_pack_counted_in_decode_sized_calls():
    model = torch.nn.Sequential(torch.nn.Linear(64, 128)).requires_grad_(False)
    use_small_batch_linears(model, fp16_weights=True)
    tally = FlopTally()
    with tally, torch.no_grad():
        model(torch.randn(8, 64))  # a decode step's rows: the fp16 pack
        model(torch.randn(100, 64))  # a prefill's: the stock GEMM
    assert tally.flops[(0, "outside", FP16_PACK)] == 2 * 8 * 64 * 128
    assert tally.flops[(0, "outside", "float32 GEMM")] == 2 * 100 * 64 * 128


def test_floor_and_table():
    rates = {"float32 GEMM": 50e9, FP16_PACK: 25e9}
    assert floor_seconds({"float32 GEMM": int(100e9), FP16_PACK: int(50e9), ATTENTION: int(50e9)}, rates) == \
        pytest.approx(2 + 2 + 1)
    rows = [{"step": 1, "phase": "play", "kernel": FP16_PACK, "flops": int(50e9)},
            {"step": 1, "phase": "learn_fwd_bwd", "kernel": "float32 GEMM", "flops": int(100e9)}]
    metrics = [{"step": 1, "timing/generate_s": 4.0, "timing/learn_fwd_bwd_s": 2.5, "timing/step_s": 10.0}]
    lines = table(rows, metrics, rates)
    assert "| 1 | generate | 0.000 | 0.050 | 2.0 s | 4.0 s | 50% |" in lines
    assert "| 1 | policy fwd+bwd | 0.100 | 0.000 | 2.0 s | 2.5 s | 80% |" in lines
    assert "| 1 | **step** | 0.100 | 0.050 | 4.0 s | 10.0 s | 40% |" in lines


def test_inference_mode_sees_whole_ops_and_they_are_counted():
    """The sampler runs under inference mode, where a dispatch mode sees `linear` and
    `scaled_dot_product_attention` undecomposed; grouped-query attention has fewer key heads."""
    lin = torch.nn.Linear(64, 32, bias=False)
    q, kv = torch.randn(1, 8, 5, 16), torch.randn(1, 2, 12, 16)
    tally = FlopTally()
    with tally, torch.inference_mode():
        lin(torch.randn(3, 7, 64))
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        torch.matmul(torch.randn(4, 64), torch.randn(64, 10))
    assert tally.flops[(0, "outside", "float32 GEMM")] == 2 * 21 * 64 * 32 + 2 * 4 * 64 * 10
    assert tally.flops[(0, "outside", ATTENTION)] == 4 * 8 * 5 * 12 * 16
    assert not tally.uncounted


def test_an_uncounted_product_is_reported():
    tally = FlopTally()
    with tally:
        torch.dot(torch.randn(5), torch.randn(5))
    assert tally.uncounted == {"aten.dot.default": 1}
