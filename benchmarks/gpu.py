"""GPU smoke test and benchmark: a few real RL steps on CUDA in bf16, at 32/64/128 games a step.

Reports games/s, generated tokens/s, the learner's share of a step and peak GPU memory. The GPU
machines here have torch/transformers/peft/accelerate but no network and no pip packages of
ours, and receive files only in transfers of a few tens of MB. So the real weights travel in
parts: `pack` (on a machine with `selfredteam setup` done) splits the embedded model's
safetensors dir and the judge's encoder into chunks of at most --chunk-mb, with a manifest of
SHA-256 sums; `unpack` (on the GPU machine) joins them and checks every file; `run` trains.
(The alternative, the embedded architecture with random weights, measures throughput but no
learning; this script uses the real weights.) `run` needs the package's dependencies there too:
on a machine without a network, `pip download -d wheels/ -e .` here and
`pip install --no-index --find-links wheels/ -e .` there (torch, transformers, peft and
accelerate are usually installed already).

    python benchmarks/gpu.py pack --out ship/            # here: chunks + manifest.json
    python benchmarks/gpu.py unpack ship/ --out models/  # there, after copying ship/ over
    python benchmarks/gpu.py run --model models/policy --encoder models/encoder --games 32 64 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's package, installed or not

from selfredteam.policy.embedded import sha256  # noqa: E402

CHUNK_MB = 48


def default_roots() -> dict[str, Path]:
    from selfredteam.judges.embedded import encoder_path
    from selfredteam.policy.embedded import embedded_model_dir

    return {"policy": embedded_model_dir(), "encoder": encoder_path()}


def pack(out: Path, chunk_mb: float, roots: dict[str, Path] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    size = int(chunk_mb * 2**20)
    manifest: dict = {"chunk_mb": chunk_mb, "files": []}
    for name, root in (roots or default_roots()).items():
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = f"{name}/{f.relative_to(root)}"
            parts = []
            with open(f, "rb") as src:
                for i, block in enumerate(iter(lambda: src.read(size), b"")):
                    part = out / f"{rel.replace('/', '__')}.part{i:03d}"
                    part.write_bytes(block)
                    parts.append(part.name)
            manifest["files"].append({"path": rel, "sha256": sha256(f), "size": f.stat().st_size, "parts": parts})
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
    print(f"{len(manifest['files'])} files joined and verified in {out}")


def run(model: Path, encoder: Path | None, games: list[int], steps: int, out: Path) -> None:
    import os

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py run needs a CUDA GPU, and torch.cuda.is_available() is False here. "
                         "Run it on a GPU machine (see the module docstring for moving the weights there).")
    if encoder:
        os.environ["SELFREDTEAM_ENCODER"] = str(encoder)
    from selfredteam.config import load_config
    from selfredteam.rl.loop import train

    gpu = torch.cuda.get_device_name(0)
    print(f"`train --preset single-gpu` with the embedded model ({model}), bf16, {steps} steps each; {gpu}\n")
    print("| games/step | step s | games/s | gen tokens/s | learner share | peak GPU memory |")
    print("|---|---|---|---|---|---|")
    for n in games:
        torch.cuda.reset_peak_memory_stats()
        cfg = load_config("single-gpu", overrides=[
            f"model.name_or_path={model}", "model.dtype=bfloat16", "judge.kind=embedded", f"train.steps={steps}",
            f"train.rollout_batch_size={n}", f"generation.batch_size={n}", "train.save_every=1000",
            "train.sft_coef=0", "generation.attacker_max_new_tokens=256", "generation.defender_max_new_tokens=256"])
        t0 = time.perf_counter()
        train(cfg, out / f"games{n}", log=lambda *a: None)
        rows = [json.loads(x) for x in (out / f"games{n}" / "metrics.jsonl").read_text().splitlines()]
        rows = rows[1:] or rows  # the first step compiles kernels and warms caches
        step = sum(r["timing/step_s"] for r in rows) / len(rows)
        tok = sum(r["perf/tokens_per_s"] for r in rows) / len(rows)
        learn = sum(r["timing/learn_s"] for r in rows) / len(rows)
        print(f"| {n} | {step:.1f} | {n / step:.2f} | {tok:.0f} | {learn / step:.0%} | "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |", flush=True)
    print(f"\n(steps after the first averaged; total {time.perf_counter() - t0:.0f} s for the last size)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chunk-mb", type=float, default=CHUNK_MB)
    u = sub.add_parser("unpack")
    u.add_argument("ship", type=Path)
    u.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--encoder", type=Path)
    r.add_argument("--games", type=int, nargs="+", default=[32, 64, 128])
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--out", type=Path, default=Path("runs/gpu-bench"))
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.out, args.chunk_mb)
    elif args.cmd == "unpack":
        unpack(args.ship, args.out)
    else:
        run(args.model, args.encoder, args.games, args.steps, args.out)


if __name__ == "__main__":
    sys.exit(main())
