"""The EMA of the generator's weights: what samples, evaluation and export use.

torch's `AveragedModel.update_parameters` reads its step counter on the host
(`bool(self.n_averaged == 0)`, `if self.n_averaged > 0`) at every update: on a
GPU that is a device synchronisation per training step, which stalls the
queue of kernels the CPU launches ahead. This one is the same
exponential average in two foreach kernels, with no host sync.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """`module` holds the average; `update(model, step)` moves it `1 - decay` of the way to `model`.

    Given the step, the decay is warmed up as min(decay, (1 + step) / (10 + step))
    (TensorFlow's ExponentialMovingAverage with num_updates): early on the
    average follows the model instead of dragging the random initial weights
    along, so a slow decay such as 0.9999 also suits short runs.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        # accelerate.prepare under mixed precision patches the model's forward with its autocast; the copy
        # keeps the class's own forward, so samples, evaluation and export all run in fp32.
        for patched in ("forward", "_original_forward"):
            self.module.__dict__.pop(patched, None)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | torch.Tensor | None = None) -> None:
        """`step` may be a device tensor (a CUDA-graphed step): then the decay is computed on the device."""
        ema = list(self.module.parameters()) + list(self.module.buffers())
        live = [t.detach() for t in list(model.parameters()) + list(model.buffers())]
        averaged = [e for e in ema if e.is_floating_point()]
        targets = [m for e, m in zip(ema, live) if e.is_floating_point()]
        if averaged and isinstance(step, torch.Tensor):  # lerp would read a tensor weight on the host
            decay = ((1 + step) / (10 + step)).clamp(max=self.decay)
            torch._foreach_mul_(averaged, decay)
            torch._foreach_add_(averaged, torch._foreach_mul(targets, 1 - decay))
        elif averaged:  # (foreach ops refuse empty lists)
            decay = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(averaged, targets, 1.0 - decay)
        for e, m in zip(ema, live):  # integer buffers (BatchNorm's batch counter) are copied
            if not e.is_floating_point():
                e.copy_(m)
