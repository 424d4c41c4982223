"""Run by `accelerate launch --config_file configs/accelerate/fsdp.yaml` from test_distributed.py:
one shard of the samples per process, the model sharded by FSDP2 over gloo."""

import sys

from safetensors.torch import save_file

from selfredteam.config import TrainConfig
from selfredteam.rl.distributed import is_fsdp, make_accelerator
from selfredteam.rl.learner import Learner
from tests.rl.test_learner import full_policy, lora_policy, samples

mode, out = sys.argv[1], sys.argv[2]
acc = make_accelerator()
rank, world = acc.process_index, acc.num_processes
assert world == 2 and is_fsdp(acc), (world, acc.distributed_type)
policy = lora_policy(0) if mode == "lora" else full_policy(0)
cfg = TrainConfig(lr=1e-2, train_batch_size=4 // world, micro_batch_size=1, kl_coef=0.05)
Learner(policy, cfg, acc).update(samples()[rank::world])
weights = policy.weights_for_save()  # gathered: every process takes part
if rank == 0:
    save_file({k: v.contiguous() for k, v in weights.items()}, out)
acc.wait_for_everyone()
