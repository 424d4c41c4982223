"""Data-parallel training through accelerate: DDP, FSDP2 and DeepSpeed launches, in one place.

Each process plays its own games and the learner reduces across processes (learner.py); this
module holds what depends on *how* the processes share the model:

- `make_accelerator()`: None for a single process. On CPU, accelerate forms a gloo group only
  when asked for `cpu=True`, and it never turns FSDP on there (it keeps FSDP for accelerators),
  so a launch that asks for FSDP (`ACCELERATE_USE_FSDP`, set by `accelerate launch --use_fsdp`
  or an FSDP config file) gets its plugin set explicitly: FSDP2 then shards over gloo on CPU,
  which is how the tests check that FSDP updates like one process.
- `sampling_params_gathered(model)`: FSDP2 keeps each process's shard of the weights; sampling
  needs all of them, and every forward of a sharded module is a collective that all processes
  would have to run in step, which they cannot while each samples its own games. So the full
  weights are gathered once per step around the rollout, without resharding after forwards,
  and sharded again after it (what TRL and verl do for rollouts under FSDP).
- `full_model_state` / `optimizer_state` / `load_optimizer_state`: checkpoints hold full
  (gathered) weights and an optimizer state keyed by parameter names, so a checkpoint written
  by N FSDP processes resumes exactly in one process and the other way round.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def make_accelerator() -> Any | None:
    """An accelerate Accelerator when launched with several processes (accelerate launch /
    torchrun set WORLD_SIZE); None in a plain single-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    cpu = not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        from selfredteam.errors import UserError

        raise UserError("DeepSpeed launches are not supported by the learner yet (its engine owns backward, "
                        "the optimizer step and partitioned parameters, none of which the learner drives): use "
                        "FSDP2, which shards the same way as ZeRO-3: accelerate launch --config_file "
                        "configs/accelerate/fsdp.yaml ... (README, Scaling out).")
    if cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" \
            and acc.distributed_type == DistributedType.MULTI_CPU:
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings of the launch
        acc.state.distributed_type = DistributedType.FSDP
    return acc


def is_fsdp(acc: Any | None) -> bool:
    if acc is None:
        return False
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def fsdp_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def sampling_params_gathered(model: torch.nn.Module) -> Iterator[None]:
    """Full weights on every process for the rollout (a no-op for a model that is not sharded).
    Every process must enter and leave together: both are collectives."""
    mods = fsdp_modules(model)
    if mods and not getattr(model, "_rollout_ready", False):
        # FSDP2 sets itself up on the root's first forward; `generate` enters below the root
        # (peft hands it to the wrapped model), so one token goes through the root first.
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device))
        model._rollout_ready = True
    for m in mods:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All weights, gathered and on CPU (a collective under FSDP: every process calls it)."""
    return get_model_state_dict(model, options=FULL)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter names, gathered (a collective under FSDP)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if state.get("state") and all(isinstance(k, int) for k in state["state"]):
        optimizer.load_state_dict(state)  # checkpoints written before names were used: single process only
        return
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
