"""benchmarks/gpu.py: the weights travel in verified parts; without CUDA `run` says so and stops."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_pack_and_unpack_round_trip_and_verify(tmp_path):
    import gpu

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(bytes(range(256)) * 20)  # 5120 bytes -> 3 parts of 2 KiB
    (src / "sub" / "config.json").write_text('{"a": 1}')
    gpu.pack(tmp_path / "ship", 2 / 1024, roots={"policy": src})
    parts = sorted(p.name for p in (tmp_path / "ship").glob("*.part*"))
    assert len(parts) == 4
    gpu.unpack(tmp_path / "ship", tmp_path / "out")
    assert (tmp_path / "out" / "policy" / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (tmp_path / "out" / "policy" / "sub" / "config.json").read_text() == '{"a": 1}'
    (tmp_path / "ship" / parts[0]).write_bytes(b"corrupt")
    with pytest.raises(SystemExit, match="SHA-256"):
        gpu.unpack(tmp_path / "ship", tmp_path / "out2")


def test_run_without_cuda_exits_with_a_clear_message(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "run", "--model", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "needs a CUDA GPU" in res.stderr and "Traceback" not in res.stderr


def test_light_pack_leaves_out_policy_weights_and_restores_fp32_encoder(tmp_path):
    import gpu
    import torch
    from safetensors.torch import load_file, save_file

    policy, encoder = tmp_path / "policy", tmp_path / "encoder"
    policy.mkdir()
    encoder.mkdir()
    save_file({"w": torch.ones(4)}, policy / "model.safetensors")
    (policy / "config.json").write_text("{}")
    weights = {"w": torch.tensor([0.1, -2.5, 3.0]), "ids": torch.arange(3)}
    save_file(weights, encoder / "model.safetensors")
    gpu.pack(tmp_path / "ship", 1, roots={"policy": policy, "encoder": encoder}, light=True)
    gpu.unpack(tmp_path / "ship", tmp_path / "out")
    assert not gpu.has_weights(tmp_path / "out" / "policy") and (tmp_path / "out" / "policy" / "config.json").exists()
    back = load_file(tmp_path / "out" / "encoder" / "model.safetensors")
    assert back["w"].dtype == torch.float32 and torch.allclose(back["w"], weights["w"], atol=1e-3)
    assert torch.equal(back["ids"], weights["ids"])  # integer tensors travel as they are


def test_run_refuses_a_model_without_weights_unless_random_init(tmp_path, monkeypatch):
    import gpu
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit, match="--random-init"):
        gpu.run(tmp_path, None, [32], 1, tmp_path / "out")
