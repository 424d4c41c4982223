"""Run by `accelerate launch --config_file configs/accelerate/{fsdp,deepspeed-zero3}.yaml` from
test_distributed.py: one shard of the samples per process, the model sharded by FSDP2 or
DeepSpeed ZeRO-3 over gloo."""

import os
import sys

import torch
from safetensors.torch import save_file

from selfredteam.config import TrainConfig
from selfredteam.rl.distributed import is_deepspeed, is_fsdp, make_accelerator
from selfredteam.rl.learner import Learner
from tests.rl.test_learner import full_policy, lora_policy, samples

kind, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
acc = make_accelerator()
rank, world = acc.process_index, acc.num_processes
sharded = is_deepspeed(acc) if kind == "deepspeed" else is_fsdp(acc)
assert world == 2 and sharded, (world, acc.distributed_type)
policy = lora_policy(0) if mode == "lora" else full_policy(0)
cfg = TrainConfig(lr=1e-2, train_batch_size=4 // world, micro_batch_size=1, kl_coef=0.05)
learner = Learner(policy, cfg, acc)
learner.update(samples()[rank::world])
# The name-keyed optimizer state goes back into the shards exactly (what a resume does: every
# process reads the file; FSDP gathers the state on rank 0 only, so it is broadcast here).
saved = [learner.state_dict()]
torch.distributed.broadcast_object_list(saved, src=0)
learner.load_state_dict(saved[0])
again = learner.state_dict()["optimizer"].get("state", {})  # FSDP: empty on rank 1
if rank == 0:
    assert saved[0]["optimizer"]["state"].keys() == again.keys() and len(again) > 0
    for name, st in again.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[key], saved[0]["optimizer"]["state"][name][key]), (name, key)
weights = policy.weights_for_save()  # gathered: every process takes part
if rank == 0:
    save_file({k: v.contiguous() for k, v in weights.items()}, out)
acc.end_training()  # waits are not enough: leave the gloo group before exit, or a process can abort
# Even then one process aborted at interpreter teardown twice in CI ('terminate called without an active
# exception', SIGABRT) after every check above had passed and the file was written: skip that teardown.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
