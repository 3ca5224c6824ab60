"""The adaptive augmentation probability of ADA (Karras et al. 2020), kept on the device.

The overfitting heuristic is r_t = E[sign(D(x_real))]: near 0 while D cannot
tell the training images from G's, near 1 once it has memorised them. Every
few steps p moves towards keeping r_t at a target (0.6 in the paper):

    p <- clamp(p + sign(r_t - target) * images / speed_images, 0, 1)

where `images` is the number of real images D scored since the last
adjustment (batch x interval), so p can cross [0, 1] in `speed_images`
images (500k in the paper) whatever the batch and interval.

All of it lives in buffers and runs as kernels: no `.item()`, no host
branches, so `accumulate` and `adjust` can sit inside a captured CUDA graph,
and the state (p, the last r_t, the running sums) is saved and restored
bit for bit with `state_dict` / `load_state_dict`.

Under DDP each rank accumulates its own sums; at an adjustment they must be
summed over ranks first, or the ranks' p drift apart:

    stats = ada.stats()                 # a copy: [sum of signs, images scored]
    torch.distributed.all_reduce(stats) # or accelerator.reduce(stats, "sum")
    ada.adjust(stats)                   # the same p on every rank
"""

from __future__ import annotations

import torch
from torch import nn


class AdaptiveP(nn.Module):
    """p in [0, 1] (buffer `p`), driven by the sign of D's logits on real images.

    `threshold` is the logit at which D is undecided: 0 for bce and hinge,
    0.5 for lsgan (losses.decision_threshold); wgan-gp has none, so ADA
    does not apply to it.
    """

    def __init__(self, target: float = 0.6, speed_images: int = 500_000, initial_p: float = 0.0,
                 threshold: float = 0.0):
        super().__init__()
        if not 0.0 <= initial_p <= 1.0:
            raise ValueError(f"initial p must be in [0, 1], got {initial_p}")
        if speed_images < 1:
            raise ValueError(f"speed_images must be >= 1, got {speed_images}")
        self.target, self.speed_images, self.threshold = target, speed_images, threshold
        self.register_buffer("p", torch.tensor(float(initial_p)))
        self.register_buffer("r_t", torch.tensor(0.0))  # the last adjustment's heuristic (the logs read d/r_t)
        # [sum of sign(D(real) - threshold), number of logits] since the last adjustment; float32 counts
        # are exact up to 2**24 images between two adjustments.
        self.register_buffer("sums", torch.zeros(2))

    @torch.no_grad()
    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add one D step's logits on (augmented) real images; one logit per image."""
        signs = torch.sign(real_logits.detach().float() - self.threshold)
        self.sums[0].add_(signs.sum())
        self.sums[1].add_(real_logits.numel())

    def stats(self) -> torch.Tensor:
        """A copy of the running sums, [sum of signs, count], to all-reduce across ranks before `adjust`."""
        return self.sums.clone()

    @torch.no_grad()
    def adjust(self, stats: torch.Tensor | None = None) -> None:
        """Move p by sign(r_t - target) * count / speed_images, record r_t, and restart the sums.

        `stats` are the sums to use (the all-reduced `stats()` under DDP);
        None uses this process's own. With nothing accumulated p stays put.
        """
        total, count = (self.sums if stats is None else stats.to(self.sums)).unbind()
        r_t = total / count.clamp(min=1.0)
        step = torch.sign(r_t - self.target) * count / self.speed_images
        self.p.copy_((self.p + step).clamp(0.0, 1.0))
        self.r_t.copy_(torch.where(count > 0, r_t, self.r_t))
        self.sums.zero_()

    def extra_repr(self) -> str:
        return f"target={self.target}, speed_images={self.speed_images}, threshold={self.threshold}"
