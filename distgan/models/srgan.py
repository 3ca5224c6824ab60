"""SRGAN's networks (Ledig et al. 2017) and its data on the device: HR crops, the bicubic LR.

- G, SRResNet: a 9x9 conv + PReLU, `blocks` residual blocks (conv-BN-PReLU-conv-BN plus the
  input), a conv-BN with the long skip, log2(scale) up-sampling stages (conv to 4x the width,
  PixelShuffle(2), PReLU) and a 9x9 conv to the image, tanh: [-1, 1] in and out. Fully
  convolutional, so one export takes any height and width (and tiles: `receptive_radius`).
- D: the paper's VGG-style stack: 3x3 convs, widths 64 -> 512 doubling every two layers, every
  second conv of stride 2, BatchNorm after the first, LeakyReLU(0.2); then an adaptive pool, a
  dense 1024, LeakyReLU and one logit. The pool (1x1) lets D take any crop size; the paper's
  96x96 crops give 6x6 maps, where the paper flattens.
- The LR input is made on the device from the HR batch: antialiased bicubic down-sampling
  (torch's `interpolate(..., antialias=True)`, which matches PIL's `Image.resize(BICUBIC)`
  reduce; tests/test_srgan.py measures how closely).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SCALES = (2, 4)


@dataclass(frozen=True)
class SRGeneratorSpec:
    """Everything that fixes SRResNet's architecture."""

    channels: int = 3
    scale: int = 4
    width: int = 64  # feature channels of every block
    blocks: int = 16  # residual blocks

    def check(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale}")
        for name in ("channels", "width", "blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.PReLU(width),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """LR image [N, C, h, w] in [-1, 1] -> SR image [N, C, scale*h, scale*w] in [-1, 1]."""

    def __init__(self, spec: SRGeneratorSpec):
        super().__init__()
        spec.check()
        self.spec = spec
        w = spec.width
        self.head = nn.Sequential(nn.Conv2d(spec.channels, w, 9, padding=4), nn.PReLU(w))
        self.body = nn.Sequential(*[ResidualBlock(w) for _ in range(spec.blocks)],
                                  nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w))
        upsample = []
        for _ in range(int(math.log2(spec.scale))):
            upsample += [nn.Conv2d(w, 4 * w, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(w)]
        self.tail = nn.Sequential(*upsample, nn.Conv2d(w, spec.channels, 9, padding=4))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.head(lr)
        return torch.tanh(self.tail(features + self.body(features)))


def receptive_radius(spec: SRGeneratorSpec) -> int:
    """How many LR pixels away an input pixel can change an output pixel (rounded up to LR pixels).

    Tiles agree with the whole image beyond this distance from a tile's edge: zero padding
    at a tile border reaches no further.
    """
    lr = 4 + 2 * spec.blocks + 1  # head 9x9, two 3x3 per block, the body's last 3x3
    stages = int(math.log2(spec.scale))
    hr = lr * spec.scale + sum(spec.scale // 2**k for k in range(stages)) + 4  # each stage's 3x3, the last 9x9
    return math.ceil(hr / spec.scale)


@dataclass(frozen=True)
class SRDiscriminatorSpec:
    channels: int = 3
    width: int = 64  # first conv's channels; doubles every two convs up to 8x
    dense: int = 1024


class SRDiscriminator(nn.Module):
    """HR image [N, C, H, W] in [-1, 1] -> one logit per image."""

    def __init__(self, spec: SRDiscriminatorSpec):
        super().__init__()
        w = spec.width
        layers: list[nn.Module] = [nn.Conv2d(spec.channels, w, 3, padding=1), nn.LeakyReLU(0.2)]
        widths = [(w, w, 2), (w, 2 * w, 1), (2 * w, 2 * w, 2), (2 * w, 4 * w, 1), (4 * w, 4 * w, 2),
                  (4 * w, 8 * w, 1), (8 * w, 8 * w, 2)]
        for c_in, c_out, stride in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, spec.dense),
                                  nn.LeakyReLU(0.2), nn.Linear(spec.dense, 1))

    def forward(self, hr: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(hr)).squeeze(1)


def downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic reduce by `scale` (float NCHW in [-1, 1]; H and W multiples of scale), clamped."""
    n, c, h, w = hr.shape
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}")
    lr = F.interpolate(hr.float(), size=(h // scale, w // scale), mode="bicubic", antialias=True,
                       align_corners=False)
    return lr.clamp_(-1.0, 1.0).to(hr.dtype)


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random `size` x `size` crop per image, on the images' device (no host sync)."""
    n, c, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the images ({h}x{w})")
    if size == h == w:
        return images
    device = images.device
    top = torch.randint(0, h - size + 1, (n, 1, 1), device=device, generator=generator)
    left = torch.randint(0, w - size + 1, (n, 1, 1), device=device, generator=generator)
    offsets = torch.arange(size, device=device)
    rows = (top + offsets.view(1, size, 1)).expand(n, size, size)
    cols = (left + offsets.view(1, 1, size)).expand(n, size, size)
    batch = torch.arange(n, device=device).view(n, 1, 1).expand(n, size, size)
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def comparison_rows(generator: nn.Module, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The images people look at, for HR float NCHW in [-1, 1]: rows of LR (nearest, enlarged), bicubic,
    SR and HR, each [N, C, H, W] (4N images, row by row: N columns of a grid)."""
    lr = downsample(hr, scale)
    with torch.no_grad():
        sr = generator(lr).float()
    nearest = F.interpolate(lr, scale_factor=scale, mode="nearest")
    bicubic = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)
    return torch.cat([nearest, bicubic, sr, hr.float()])
