"""Shared by the benchmark scripts: the same prompts for every engine, and a machine line.

Every engine is fed the *same token ids* (defender turns for the shipped seeds, chat template
applied by our tokenizer), so tokens/s compare like for like.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

TURNS_PER_GAME = 1.5
"""A cpu-demo game has 1.5 generated turns on average: half the seeds are revised first."""


def bench_prompt_ids(policy, n: int) -> list[list[int]]:
    """`n` defender prompts (CoT on) as token ids, cycling through the embedded seed pool."""
    from selfredteam.data import load_seeds
    from selfredteam.game.prompts import defender_turn

    seeds = load_seeds("embedded")
    return [policy.encode(defender_turn(seeds[i % len(seeds)].prompt, cot=True)) for i in range(n)]


def cpu_name() -> str:
    """The CPU's model name and kind (native bf16 or not): tables from different CPUs differ."""
    from selfredteam.policy.runtime import cpu_kind
    from selfredteam.policy.runtime import cpu_name as model_name

    return f"{model_name()} ({cpu_kind()})"


def flop_rate(fn: Callable[[], object], flops: float, budget: float = 0.6, warmup: int = 1) -> float:
    """FLOP/s of `fn`, which does `flops` floating-point operations a call, over about `budget`
    seconds after `warmup` untimed calls. A time budget rather than a fixed count of calls, so a
    small product and a whole decode step are both timed long enough to average out a noisy VM and
    no longer than that. The kernel probes (`linear_kernels.py`, `step_flops.py`) share it, so their
    rates are measured alike."""
    for _ in range(warmup):
        fn()
    reps = 0
    t0 = time.perf_counter()
    while reps == 0 or time.perf_counter() - t0 < budget:
        fn()
        reps += 1
    return flops * reps / (time.perf_counter() - t0)


def selfredteam_cli(*args: str, root: str | Path | None = None) -> list[str]:
    """The command line that runs `selfredteam ARGS` from the package this script imported
    (or the one under `root`, a checkout or worktree: `step_ab.py` times two of them).

    Timing an old commit means running a script with PYTHONPATH pointing at that commit's worktree.
    A bare `python -m selfredteam` would then run the wrong code when started from another checkout:
    `-m` puts the working directory ahead of PYTHONPATH on sys.path, so the subprocess imported the
    checkout's package while the script had imported the worktree's. Here the imported package's
    root goes first on the subprocess's path, then the package's own `__main__` runs as `-m` would."""
    if root is None:
        import selfredteam

        root = Path(selfredteam.__file__).resolve().parents[1]
    root = str(Path(root).resolve())
    entry = f"import runpy, sys; sys.path.insert(0, {root!r}); runpy.run_module('selfredteam', run_name='__main__')"
    return [sys.executable, "-c", entry, *args]


def timed_train_cli(out: Path, steps: int, sets: list[str], root: str | Path | None = None) -> list[str]:
    """`train --preset cpu-demo` for `steps` steps into `out`, saving no checkpoint on the way (a save is
    not part of a step's time), then each `sets` override: the run the step timings come from."""
    cmd = selfredteam_cli("train", "--preset", "cpu-demo", "--out", str(out), "--set", f"train.steps={steps}",
                          "--set", "train.save_every=1000", root=root)
    for s in sets:
        cmd += ["--set", s]
    return cmd


def step_tokens(row: dict) -> int:
    """The response tokens a `train` step generated, from its metrics row (`perf/tokens_per_s` x
    `timing/generate_s`): how much sampling work the step did, to compare two runs' steps."""
    return round(row.get("perf/tokens_per_s", 0.0) * row["timing/generate_s"])
