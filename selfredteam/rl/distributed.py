"""Data-parallel training through accelerate: DDP, FSDP2 and DeepSpeed ZeRO launches, in one place.

Each process plays its own games and the learner reduces across processes (learner.py); this
module holds what depends on *how* the processes share the model:

- `make_accelerator()`: None for a single process. On CPU, accelerate forms a gloo group only
  when asked for `cpu=True`, and it never turns FSDP on there (it keeps FSDP for accelerators),
  so a launch that asks for FSDP (`ACCELERATE_USE_FSDP`, set by `accelerate launch --use_fsdp`
  or an FSDP config file) gets its plugin set explicitly: FSDP2 then shards over gloo on CPU,
  which is how the tests check that FSDP updates like one process. DeepSpeed the same way.
- `sampling_params_gathered(model)`: FSDP2 keeps each process's shard of the weights; sampling
  needs all of them, and every forward of a sharded module is a collective that all processes
  would have to run in step, which they cannot while each samples its own games. So the full
  weights are gathered once per step around the rollout, without resharding after forwards,
  and sharded again after it (what TRL and verl do for rollouts under FSDP).
- `full_model_state` / `optimizer_state` / `load_optimizer_state`: checkpoints hold full
  (gathered) weights and an optimizer state keyed by parameter names, so a checkpoint written
  by N FSDP processes resumes exactly in one process and the other way round.
- DeepSpeed (`init_deepspeed`): the engine owns backward, the optimizer step, clipping and the
  partitioned parameters, so the learner calls it for those (Learner._backward/_step). Its
  `managed_gradient_accumulation: false` mode lets the learner keep its own accumulation (a
  train batch is a variable number of micro-batches; `step()` is the boundary). Rollouts gather
  the ZeRO-3 partitions once per step with the engine's hooks removed (DeepSpeed's
  `unwrap_model_for_generation`); checkpoints use the same name-keyed format as FSDP, read from
  the partitions with DeepSpeed's `safe_get_full_*` helpers, so they resume in any layout.
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
    if cpu and acc.distributed_type == DistributedType.MULTI_CPU:
        if _launch_asks("FSDP"):
            acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings of the launch
            acc.state.distributed_type = DistributedType.FSDP
        elif _launch_asks("DEEPSPEED"):
            from accelerate.utils import DeepSpeedPlugin

            acc.state.deepspeed_plugins = DeepSpeedPlugin()  # reads the ACCELERATE_DEEPSPEED_* settings
            acc.state.distributed_type = DistributedType.DEEPSPEED
    return acc


def _launch_asks(kind: str) -> bool:
    """Whether `accelerate launch` was told to use FSDP or DEEPSPEED (its config or flags)."""
    return os.environ.get(f"ACCELERATE_USE_{kind}", "false").lower() == "true"


def is_fsdp(acc: Any | None) -> bool:
    if acc is None:
        return False
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def is_deepspeed(acc: Any | None) -> bool:
    if acc is None:
        return False
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def deepspeed_config(acc: Any, max_grad_norm: float) -> dict[str, Any]:
    """The launch's DeepSpeed config (ZeRO stage, offload, ...) with what the learner owns filled
    in: it accumulates micro-batches itself (unmanaged accumulation, step() is the boundary), one
    nominal micro-batch per step, clipping at train.max_grad_norm, and bf16 only on a GPU."""
    plugin = acc.state.deepspeed_plugin
    zero = {k: v for k, v in plugin.deepspeed_config.get("zero_optimization", {}).items() if v != "auto"}
    zero.setdefault("stage", plugin.zero_stage)
    if zero["stage"] == 3:
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", False)
    mixed = acc.mixed_precision if torch.cuda.is_available() else "no"
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False, "gradient_clipping": max_grad_norm,
            "zero_optimization": zero, "bf16": {"enabled": mixed == "bf16"}, "fp16": {"enabled": False},
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def init_deepspeed(model: torch.nn.Module, optimizer: torch.optim.Optimizer, acc: Any, max_grad_norm: float) -> Any:
    """A DeepSpeed engine around the model and our optimizer (ZeRO partitions the model in place)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(acc, max_grad_norm))
    return engine


def _zero3_params(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters ZeRO-3 partitioned (they carry a ds_id)."""
    return [p for p in params if hasattr(p, "ds_id")]


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """ZeRO-3 partitions of `params` gathered on every process (a collective); else nothing."""
    z3 = _zero3_params(params)
    if not z3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(z3):
        yield


def fsdp_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def sampling_params_gathered(model: torch.nn.Module, engine: Any | None = None) -> Iterator[None]:
    """Full weights on every process for the rollout (a no-op for a model that is not sharded).
    Every process must enter and leave together: both are collectives. `engine`: a DeepSpeed
    engine, whose ZeRO-3 hooks would otherwise fetch parameters in every forward of a rollout."""
    if engine is not None:
        if not _zero3_params(list(model.parameters())):
            yield  # ZeRO-1/2: every process holds the whole model
            return
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        with unwrap_model_for_generation(engine):
            yield
        return
    mods = fsdp_modules(model)
    if mods and not getattr(model, "_rollout_ready", False):
        # FSDP2 sets itself up on the root's first forward, which a rollout may never make (a
        # backend may enter below the root), so one token goes through the root first.
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


def gathered_state(model: torch.nn.Module, keep=lambda name: True) -> dict[str, torch.Tensor]:
    """The named parameters that `keep` selects, whole and on CPU: gathered from FSDP's DTensors
    or ZeRO-3's partitions (a collective: every process calls it)."""
    named = [(n, p) for n, p in model.named_parameters() if keep(n)]
    if not _zero3_params([p for _, p in named]):
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu() for n, p in named}
    out = {}
    for n, p in named:  # one at a time: a full model never sits gathered twice
        with gathered([p]):
            out[n] = p.detach().cpu().clone()
    return out


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All weights, gathered and on CPU (a collective under FSDP and ZeRO-3: every process calls it)."""
    if _zero3_params(list(model.parameters())):
        state = gathered_state(model)
        return state | {n: b.detach().cpu() for n, b in model.named_buffers() if n not in state}
    return get_model_state_dict(model, options=FULL)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    engine: Any | None = None) -> dict[str, Any]:
    """The optimizer state keyed by parameter names, gathered (a collective under FSDP and
    DeepSpeed). Under DeepSpeed it is read from the partitions in the format FSDP writes."""
    if engine is None:
        return get_optimizer_state_dict(model, optimizer, options=FULL)
    from deepspeed.utils import safe_get_full_optimizer_state

    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    state, names = {}, []
    step = _deepspeed_step(optimizer)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        names.append(n)
        moments = {k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")}
        if step is not None and all(v is not None for v in moments.values()):
            state[n] = {"step": step.clone()} | {k: v.detach().cpu().clone() for k, v in moments.items()}
    return {"state": state, "param_groups": [group | {"params": names}]}


def _deepspeed_step(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """Adam's step count, the same for every partition (None before the first step)."""
    for st in optimizer.state.values():
        if "step" in st:
            return torch.as_tensor(st["step"], dtype=torch.float32).detach().cpu()
    return None


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         engine: Any | None = None) -> None:
    if state.get("state") and all(isinstance(k, int) for k in state["state"]):
        optimizer.load_state_dict(state)  # checkpoints written before names were used: single process only
        return
    if engine is None:
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    from deepspeed.utils import safe_set_full_optimizer_state

    saved = state.get("state", {})
    if not saved:
        return
    # Adam creates its state at the first step; the partitions need it now to be written into.
    zero = engine.optimizer
    for flat in getattr(zero, "fp32_partitioned_groups_flat", None) or getattr(zero, "single_partition_of_fp32_groups", []):
        optimizer.state.setdefault(flat, {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                          "exp_avg_sq": torch.zeros_like(flat)})
    for group in optimizer.param_groups:  # lr etc. as saved (the scheduler resumes on top)
        group.update({k: v for k, v in state["param_groups"][0].items() if k != "params"})
    for n, p in model.named_parameters():
        if n in saved:
            for k in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, saved[n][k], k)
    step = next(iter(saved.values()))["step"]
    for st in optimizer.state.values():
        st["step"] = step.clone() if torch.is_tensor(st.get("step")) else float(step)
