"""The DDP helpers of a run, in one place: the host control channel, the snapshot check, global BatchNorm.

Control messages (a stop request, a data error, a failed checkpoint write) travel
over a gloo group on the CPU, so asking "did any rank ...?" never synchronises
the GPU stream; the trainer asks on a cadence (`train.sync_every`), never per step.
"""

from __future__ import annotations

import datetime
import re

import torch
import torch.distributed as dist
from torch import nn


class Control:
    """The run's host-side channel between ranks (a no-op on one process)."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.group = None
        self.active = world_size > 1 and dist.is_available() and dist.is_initialized()
        if self.active and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")  # every rank creates it, in the same order

    def flags(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over all ranks: one small all-reduce for all of them."""
        if not self.active:
            return list(flags)
        value = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return [bool(v) for v in value.tolist()]

    def any(self, flag: bool) -> bool:
        return self.flags(flag)[0]

    def messages(self, message: str | None) -> list[str]:
        """Every rank's message, as 'rank R: ...' (after `flags` said that some rank has one)."""
        if not self.active:
            return [f"rank 0: {message}"] if message else []
        gathered: list[str | None] = [None] * self.world_size
        dist.all_gather_object(gathered, message, group=self.group)
        return [f"rank {r}: {m}" for r, m in enumerate(gathered) if m]

    def lost_ranks(self, timeout_s: float = 10.0) -> str:
        """After a collective failed: which rank is gone. Rank 0 asks every rank (a monitored barrier names
        those that do not answer); the others can only tell that rank 0 stopped answering them."""
        if not self.active:
            return "no other rank"
        rank, world = dist.get_rank(), self.world_size
        try:
            dist.monitored_barrier(self.group, timeout=datetime.timedelta(seconds=timeout_s), wait_all_ranks=True)
        except RuntimeError as exc:
            if rank != 0:
                return "rank 0 (or the rank that stopped first)"
            found = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(exc))
            if found:
                return f"rank(s) {found.group(1).strip()}"
            return "rank 1" if world == 2 else f"one of ranks 1..{world - 1} ({str(exc).splitlines()[0][:200]})"
        return "no rank (every rank answered; the failed collective was another fault)"


def is_lost_peer(exc: BaseException) -> bool:
    """A collective that failed because another process went away (gloo and NCCL say it in their own words)."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        sign in text for sign in ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                                  "NCCL communicator was aborted", "ProcessGroupGloo", "gloo/transport"))


@torch.no_grad()
def check_consistent(modules: dict[str, nn.Module], control: Control) -> None:
    """Before a snapshot: every rank must hold the same weights, element for element (catches a silent DDP
    divergence). BatchNorm running statistics are left out: without model.sync_bn they are per rank."""
    if not control.active:
        return
    for name, module in modules.items():
        tensors = {key: t.detach() for key, t in module.state_dict().items()
                   if t.is_floating_point() and "running_" not in key}
        for dtype in (torch.float32, torch.float64):  # half and bfloat16 go exactly into float32
            keys = [k for k, t in tensors.items() if (t.dtype == torch.float64) == (dtype == torch.float64)]
            if not keys:
                continue
            local = torch.cat([tensors[k].to(dtype).flatten() for k in keys]).cpu()
            low, high = local.clone(), local.clone()
            dist.all_reduce(low, op=dist.ReduceOp.MIN, group=control.group)
            dist.all_reduce(high, op=dist.ReduceOp.MAX, group=control.group)
            if torch.equal(low, high):
                continue
            start = 0
            for key in keys:
                end = start + tensors[key].numel()
                if not torch.equal(low[start:end], high[start:end]):
                    spread = (high[start:end] - low[start:end]).abs().nan_to_num(float("inf")).max().item()
                    raise RuntimeError(f"{name}.{key} differs across ranks (elements up to {spread:.3g} apart)")
                start = end


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is the all_reduce(SUM) of the output's gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks (`model.sync_bn`); on any device and backend.

    torch's SyncBatchNorm runs on GPUs only; this one all-reduces [sum, sum of squares, count]
    with an autograd-aware all-reduce, so gradients flow through the global statistics as in
    a one-process run on the concatenated batch. Same parameters and buffers as BatchNorm, so
    the saved weights load into the plain model (export, EMA samples).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], device=x.device)
        totals = _SumOverRanks.apply(torch.cat([xf.sum(dims), xf.square().sum(dims), count]))
        channels = x.shape[1]
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean.square()).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Every BatchNorm of `module` (in place, state kept) made global; the module is returned."""
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, cls):
                replacement = cls(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
                replacement.load_state_dict(child.state_dict())
                replacement.train(child.training)
                setattr(module, name, replacement.to(next(child.buffers(), torch.empty(0)).device))
            else:
                cls.convert(child)
        return module
