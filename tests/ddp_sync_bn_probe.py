"""Run under `accelerate launch` (2 gloo ranks): GlobalBatchNorm on each rank's half of one fixed batch.

Writes `rank<r>.safetensors`: the output and input gradient of its half, the running statistics,
and the weight gradient summed over the ranks (what DDP's all-reduce would give)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from safetensors.torch import save_file

from distgan.ddp import GlobalBatchNorm

accelerator = Accelerator()
rank = accelerator.process_index
torch.manual_seed(0)
x = torch.randn(8, 3, 5, 5)
weights = torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape)
half = slice(4 * rank, 4 * rank + 4)
bn = GlobalBatchNorm.convert(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))[0]
with torch.no_grad():
    bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
mine = x[half].clone().requires_grad_(True)
y = bn(mine)
(y * weights[half]).sum().backward()
weight_grad = bn.weight.grad.clone()
dist.all_reduce(weight_grad)
save_file({"y": y.detach().contiguous(), "x_grad": mine.grad.contiguous(), "running_mean": bn.running_mean,
           "running_var": bn.running_var, "weight_grad": weight_grad}, str(Path(sys.argv[1]) / f"rank{rank}.safetensors"))
accelerator.wait_for_everyone()
dist.destroy_process_group()
