"""The few DDP helpers the trainer needs, in one place.

Control messages (a data error, a stop request) travel over a gloo group on
the CPU, so asking "did any rank ...?" never synchronises the GPU stream.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_CONTROL_GROUP = None


def control_group(world_size: int):
    """False when not distributed; else the gloo group for control flags (None = the default group)."""
    global _CONTROL_GROUP
    if world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return False
    if dist.get_backend() == "gloo":
        return None
    if _CONTROL_GROUP is None:
        _CONTROL_GROUP = dist.new_group(backend="gloo")
    return _CONTROL_GROUP


def any_rank(flag: bool, world_size: int) -> bool:
    """True on every rank if `flag` is true on any rank (a CPU all-reduce; no GPU sync)."""
    group = control_group(world_size)
    if group is False:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


@torch.no_grad()
def check_consistent(modules: dict[str, torch.nn.Module], world_size: int) -> None:
    """Before a snapshot: every rank must hold the same weights (catches a silent DDP divergence)."""
    group = control_group(world_size)
    if group is False:
        return
    for name, module in modules.items():
        for key, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            local = tensor.detach().double().sum().reshape(1).cpu()
            low, high = local.clone(), local.clone()
            dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
            dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
            if not torch.equal(low, high) and "running_" not in key:
                raise RuntimeError(f"{name}.{key} differs across ranks ({low.item()} vs {high.item()})")
