"""GPU smoke test and benchmark: a few real RL steps on CUDA in bf16, at 32/64/128 games a step.

Reports games/s, generated tokens/s, the learner's share of a step and peak GPU memory. The GPU
machines here have torch/transformers/peft/accelerate but no network and no pip packages of
ours, and receive files only in transfers of a few tens of MB. So the real weights travel in
parts: `pack` (on a machine with `selfredteam setup` done) splits the embedded model's
safetensors dir and the judge's encoder into chunks of at most --chunk-mb, with a manifest of
SHA-256 sums; `unpack` (on the GPU machine) joins them and checks every file; `run` trains.
`pack --light` ships only what fits one such transfer (~57 MiB): the policy's config, tokenizer
and chat template without its weights, and the judge's encoder stored in fp16 (upcast back to
fp32 by `unpack`); `run --random-init` then builds the embedded architecture with random weights
(seed 0) there. That measures throughput, not learning: random weights never emit EOS, so every
generation runs to its token limit (a fixed-length worst case). BENCHMARKS.md says which mode
each table used. `run` needs the package's dependencies there too:
on a machine without a network, `pip download -d wheels/ -e .` here and
`pip install --no-index --find-links wheels/ -e .` there (torch, transformers, peft and
accelerate are usually installed already).

    python benchmarks/gpu.py pack --out ship/            # here: chunks + manifest.json
    python benchmarks/gpu.py unpack ship/ --out models/  # there, after copying ship/ over
    python benchmarks/gpu.py run --model models/policy --encoder models/encoder --games 32 64 128
    # or, in one transfer: pack --light here, then run --random-init there
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's package, installed or not

from selfredteam.fsutil import read_jsonl  # noqa: E402
from selfredteam.policy.embedded import sha256  # noqa: E402

CHUNK_MB = 48


def default_roots() -> dict[str, Path]:
    from selfredteam.judges.embedded import encoder_path
    from selfredteam.policy.embedded import embedded_model_dir

    return {"policy": embedded_model_dir(), "encoder": encoder_path()}


def _recast(src: Path, dst: Path, to_half: bool) -> Path:
    """A safetensors file with its fp32 tensors as fp16 (`to_half`: half the bytes, so a light pack
    fits one transfer) or its fp16 tensors back as fp32 (after unpack verified the fp16 copy, so
    the judge computes as it does elsewhere); other tensors (integer ids) as they are."""
    import torch
    from safetensors.torch import load_file, save_file

    frm, to = (torch.float32, torch.float16) if to_half else (torch.float16, torch.float32)
    save_file({k: v.to(to) if v.dtype == frm else v for k, v in load_file(src).items()}, dst, metadata={"format": "pt"})
    return dst


def pack(out: Path, chunk_mb: float, roots: dict[str, Path] | None = None, light: bool = False) -> None:
    """Split each root's files into parts with a manifest. `light`: leave out the policy's weights
    (run --random-init there) and store the encoder's weights in fp16 (unpack upcasts them)."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    size = int(chunk_mb * 2**20)
    manifest: dict = {"chunk_mb": chunk_mb, "light": light, "files": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, root in (roots or default_roots()).items():
            for f in sorted(p for p in root.rglob("*") if p.is_file()):
                rel = f"{name}/{f.relative_to(root)}"
                upcast = light and f.suffix == ".safetensors"
                if upcast and name == "policy":
                    continue
                if upcast:
                    f = _recast(f, Path(tmp) / f.name, to_half=True)
                parts = []
                with open(f, "rb") as src:
                    for i, block in enumerate(iter(lambda: src.read(size), b"")):
                        part = out / f"{rel.replace('/', '__')}.part{i:03d}"
                        part.write_bytes(block)
                        parts.append(part.name)
                manifest["files"].append({"path": rel, "sha256": sha256(f), "size": f.stat().st_size, "parts": parts,
                                          "upcast_to_fp32": upcast})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(x["size"] for x in manifest["files"]) / 2**20
    print(f"{len(manifest['files'])} files, {total:.0f} MiB in chunks of <= {chunk_mb} MiB in {out}")


def unpack(ship: Path, out: Path) -> None:
    manifest = json.loads((ship / "manifest.json").read_text())
    for entry in manifest["files"]:
        target = out / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as dst:
            for part in entry["parts"]:
                dst.write((ship / part).read_bytes())
        if target.stat().st_size != entry["size"] or sha256(target) != entry["sha256"]:
            raise SystemExit(f"{target}: size or SHA-256 differs from the manifest; copy the parts again.")
        if entry.get("upcast_to_fp32"):
            _recast(target, target, to_half=False)
    print(f"{len(manifest['files'])} files joined and verified in {out}")


def has_weights(model: Path) -> bool:
    return any(model.glob("*.safetensors"))


def random_init(model: Path, dst: Path, seed: int = 0) -> Path:
    """The embedded architecture with random weights (config and tokenizer from `model`)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), dtype=torch.bfloat16)
    dst.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(dst)
    for f in model.iterdir():
        if f.is_file() and not (dst / f.name).exists():
            shutil.copy(f, dst / f.name)
    return dst


def run(model: Path, encoder: Path | None, games: list[int], steps: int, out: Path, random: bool = False,
        max_new_tokens: int = 256) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py run needs a CUDA GPU, and torch.cuda.is_available() is False here. "
                         "Run it on a GPU machine (see the module docstring for moving the weights there).")
    if not random and not has_weights(model):
        raise SystemExit(f"{model} has no *.safetensors weights (a light pack?); pass --random-init to measure "
                         "throughput with random weights, or pack without --light to ship the real ones.")
    bench(model, encoder, games, steps, out, "cuda", random, max_new_tokens)


def bench(model: Path, encoder: Path | None, games: list[int], steps: int, out: Path, device: str,
          random: bool, max_new_tokens: int) -> list[dict]:
    """Train `steps` steps at each size and print one table row per size (also on CPU, for tests)."""
    import os

    import torch

    if encoder:
        os.environ["SELFREDTEAM_ENCODER"] = str(encoder)
    from selfredteam.config import load_config
    from selfredteam.rl.loop import train

    cuda = device == "cuda"
    if random:
        model = random_init(model, out / "random-policy")
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    weights = "random weights (throughput only)" if random else "real weights"
    print(f"`train --preset single-gpu` with the embedded architecture, {weights}, bf16, {steps} steps each, "
          f"{max_new_tokens} new tokens per turn; {name}\n")
    print("| games/step | step s | games/s | gen tokens/s | learner share | peak GPU memory |")
    print("|---|---|---|---|---|---|")
    table = []
    for n in games:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        cfg = load_config("single-gpu", overrides=[
            f"model.name_or_path={model}", f"model.device={device}", "model.dtype=bfloat16", "judge.kind=embedded",
            f"train.steps={steps}", f"train.rollout_batch_size={n}", f"generation.batch_size={n}",
            "train.save_every=1000", "train.sft.coef=0", f"generation.attacker_max_new_tokens={max_new_tokens}",
            f"generation.defender_max_new_tokens={max_new_tokens}"])
        t0 = time.perf_counter()
        train(cfg, out / f"games{n}", log=lambda *a: None)
        rows = read_jsonl(out / f"games{n}" / "metrics.jsonl")
        rows = rows[1:] or rows  # the first step compiles kernels and warms caches
        step = sum(r["timing/step_s"] for r in rows) / len(rows)
        row = {"games": n, "step_s": step, "games_per_s": n / step,
               "tokens_per_s": sum(r["perf/tokens_per_s"] for r in rows) / len(rows),
               "learner_share": sum(r["timing/learn_s"] for r in rows) / len(rows) / step,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
               "wall_s": time.perf_counter() - t0}
        table.append(row)
        print(f"| {n} | {step:.1f} | {row['games_per_s']:.2f} | {row['tokens_per_s']:.0f} | "
              f"{row['learner_share']:.0%} | {row['peak_gib']:.1f} GiB |", flush=True)
    print("\n(steps after the first averaged: the first compiles kernels and warms caches)")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chunk-mb", type=float, default=CHUNK_MB)
    p.add_argument("--light", action="store_true",
                   help="no policy weights (run --random-init there), encoder in fp16: one ~57 MiB transfer")
    u = sub.add_parser("unpack")
    u.add_argument("ship", type=Path)
    u.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--encoder", type=Path)
    r.add_argument("--games", type=int, nargs="+", default=[32, 64, 128])
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--out", type=Path, default=Path("runs/gpu-bench"))
    r.add_argument("--random-init", action="store_true", help="random weights of the model's architecture")
    r.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.out, args.chunk_mb, light=args.light)
    elif args.cmd == "unpack":
        unpack(args.ship, args.out)
    else:
        run(args.model, args.encoder, args.games, args.steps, args.out, args.random_init, args.max_new_tokens)


if __name__ == "__main__":
    sys.exit(main())
