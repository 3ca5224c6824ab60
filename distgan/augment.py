"""Differentiable augmentation of every image D sees (DiffAugment, Zhao et al. 2020).

A discriminator trained on a few thousand images memorises them; augmenting
its input, real and generated images alike, keeps its feedback informative.
The augmentations are differentiable, so G is trained through them, and as
both sides are augmented D cannot tell them apart by the augmentation itself.
G could still learn to produce augmented-looking images (a "leak"); Karras
et al. 2020 find that this does not happen in practice while each op is
applied with a probability p below about 0.8, and Zhao et al. 2020 that these
three ops do not leak even at p = 1.

Policies (comma-separated, applied in this order whatever the order written):

| policy        | ops, each per sample with probability p                              |
|---------------|----------------------------------------------------------------------|
| `color`       | brightness + U[-0.5, 0.5); saturation x U[0, 2); contrast x U[0.5, 1.5) |
| `translation` | shift by up to 1/8 of the side in x and y, vacated pixels set to 0     |
| `cutout`      | a square of half the side set to 0, its centre uniform over the image |

Images are in [-1, 1], so 0 is mid-grey: the fill of translation and cutout.

Everything runs on the images' device with no host synchronisation and no
data-dependent Python control flow, so `augment` can sit inside a captured
CUDA graph: `p` is a 0-dim device tensor read only by kernels, the random
numbers come from torch.rand/randint on the device, and every shape is fixed.
Each op draws its random numbers whatever p is; a sample the op skips is taken
back with torch.where, so p = 0 returns the input bit for bit.
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

import torch

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """"color,cutout" -> ("color", "cutout"), in the canonical order; "" -> () (no augmentation).

    Unknown names raise ValueError with the nearest valid one.
    """
    names = [n.strip() for n in policy.split(",")] if isinstance(policy, str) else list(policy)
    names = [n for n in names if n]
    for name in names:
        if name not in POLICIES:
            near = difflib.get_close_matches(name, POLICIES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"unknown augmentation {name!r}{hint}; valid: {', '.join(POLICIES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"augmentation policy {policy!r} names an augmentation twice")
    return tuple(name for name in POLICIES if name in names)


def augment(images: torch.Tensor, policy: str | Sequence[str], p: torch.Tensor) -> torch.Tensor:
    """Augment a batch [N, C, H, W] in [-1, 1]: each op of `policy` hits each sample with probability `p`.

    `p` is a 0-dim float tensor on the images' device (a fixed `aug.p`, or
    `AdaptiveP.p`); it is never read on the host. Returns a tensor of the same
    shape, dtype and memory format (NCHW or channels_last), values in [-1, 1].
    Gradients flow to `images` through every op.
    """
    ops = parse_policy(policy)
    if not ops:
        return images
    if images.dim() != 4:
        raise ValueError(f"augment expects images [N, C, H, W]; got shape {list(images.shape)}")
    if not isinstance(p, torch.Tensor) or p.dim() != 0 or p.device != images.device:
        raise ValueError(f"augment's p must be a 0-dim tensor on {images.device} (a host value would "
                         f"be baked into a CUDA graph); got {p!r}")
    channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    x = images
    for name in ops:
        for op in _OPS[name]:
            x = _with_probability(op, x, p)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _with_probability(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """op(x) for the samples whose draw falls below p, x itself (the same bits) for the rest."""
    hit = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(hit.view(-1, 1, 1, 1), op(x), x)


def _uniform(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """One factor per sample, U[low, high), shaped [N, 1, 1, 1] in x's dtype (a float32 factor would promote bf16)."""
    u = torch.rand(x.shape[0], 1, 1, 1, device=x.device)
    return (low + (high - low) * u).to(x.dtype)


# The colour ops leave [-1, 1] (a bright image shifted by +0.5, a saturated one scaled by 2); the
# paper lets them. We clamp: D's input then stays in the range every real image has and that G's
# tanh can reach, so neither side carries out-of-range values that the other cannot produce, and
# the augmented batch is still a valid image batch (viewable, quantisable). The price is that a
# clipped pixel passes no gradient for that sample, as a saturated real pixel carries no detail.

def brightness(x: torch.Tensor) -> torch.Tensor:
    """x + b, b ~ U[-0.5, 0.5) per sample, clamped to [-1, 1]."""
    return (x + _uniform(x, -0.5, 0.5)).clamp(-1.0, 1.0)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean by s ~ U[0, 2); grayscale is returned as is."""
    if x.shape[1] == 1:  # one channel: every pixel equals its channel mean; a static shape check
        return x
    mean = x.mean(dim=1, keepdim=True)
    return ((x - mean) * _uniform(x, 0.0, 2.0) + mean).clamp(-1.0, 1.0)


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale each image's deviation from its mean by c ~ U[0.5, 1.5), clamped to [-1, 1]."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * _uniform(x, 0.5, 1.5) + mean).clamp(-1.0, 1.0)


def translation(x: torch.Tensor) -> torch.Tensor:
    """Shift each image by whole pixels, up to 1/8 of its side in y and x; vacated pixels become 0.

    Two gathers (rows, then columns) at per-sample offsets: exact copies of
    the input values, and a gather's backward routes each gradient back to
    the pixel it came from. Positions outside the image read a clamped
    index and are then zeroed, so their gradient is 0 and the backward's
    atomic adds sum the same values in any order.
    """
    n, c, h, w = x.shape
    rows, row_ok = _shifted_index(n, h, x.device)
    cols, col_ok = _shifted_index(n, w, x.device)
    moved = x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
    moved = moved.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
    inside = row_ok.view(n, 1, h, 1) & col_ok.view(n, 1, 1, w)
    return torch.where(inside, moved, torch.zeros((), dtype=x.dtype, device=x.device))


def _shifted_index(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample a shift t in [-size // 8, size // 8]: the source index i + t of each position i
    (clamped into range) and whether it lies inside the image."""
    reach = size // 8
    shift = torch.randint(-reach, reach + 1, (n, 1), device=device)
    source = torch.arange(size, device=device) + shift
    inside = (source >= 0) & (source < size)
    return source.clamp(0, size - 1), inside


def cutout(x: torch.Tensor) -> torch.Tensor:
    """Set a square of half the image's side to 0; its centre is uniform over the image, so it may be clipped."""
    n, _, h, w = x.shape
    in_rows = _window(n, h, x.device)
    in_cols = _window(n, w, x.device)
    hole = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)
    return torch.where(hole, torch.zeros((), dtype=x.dtype, device=x.device), x)


def _window(n: int, size: int, device: torch.device) -> torch.Tensor:
    """Per sample, which of `size` positions fall in a window of size // 2 centred at a uniform position."""
    length = size // 2
    centre = torch.randint(0, size + 1 - length % 2, (n, 1), device=device)
    start = centre - length // 2
    position = torch.arange(size, device=device)
    return (position >= start) & (position < start + length)


_OPS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}
