"""Metric trackers behind one protocol: metrics.jsonl always, TensorBoard and W&B when available.

Keys are namespaced (`game/...`, `reward/...`, `loss/...`, `kl/...`, `timing/...`, `perf/...`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlTracker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, project: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=project, config=config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MultiTracker:
    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log(step, metrics)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def build_trackers(out: Path, wandb_project: str | None, config: dict[str, Any]) -> MultiTracker:
    """metrics.jsonl always; TensorBoard if `tensorboard` is installed; W&B only when asked."""
    trackers: list[Tracker] = [JsonlTracker(out / "metrics.jsonl")]
    with contextlib.suppress(ImportError):
        trackers.append(TensorBoardTracker(out / "tensorboard"))
    if wandb_project:
        trackers.append(WandbTracker(wandb_project, config))
    return MultiTracker(trackers)
