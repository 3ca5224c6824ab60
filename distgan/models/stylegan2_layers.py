"""StyleGAN2's layers in plain PyTorch (no custom CUDA ops): equalised learning rate, FIR resampling,
modulated convolution with weight demodulation, minibatch standard deviation.

Everything here exports to ONNX with a dynamic batch: the modulated convolution is the "non-fused"
form of Karras et al. 2020 (scale the activations by the styles, one convolution with the shared
weight, scale by the demodulation coefficients) rather than one grouped convolution with
`groups = batch`, whose group count an ONNX graph would freeze. The two are equal in exact
arithmetic; stylegan2-ada-pytorch trains with this form too.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through a leaky ReLU(0.2)
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)  # the [1, 3, 3, 1] low-pass of StyleGAN2's up- and down-sampling


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x scaled to unit mean square per row: z and the label embedding enter the mapping on one scale."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def fir_kernel(channels: int, gain: float = 1.0) -> torch.Tensor:
    """The separable 2-D FIR kernel summing to `gain` (4 for a 2x up-sampling: 3 zeros in 4 inputs), one copy per
    channel: a depthwise weight [channels, 1, 4, 4] of a fixed shape (an exported graph needs it constant)."""
    taps = torch.tensor(FIR_TAPS)
    kernel = taps[:, None] * taps[None, :]
    return (kernel * (gain / kernel.sum())).expand(channels, 1, -1, -1).contiguous()


def fir_filter(x: torch.Tensor, kernel: torch.Tensor, pad: int) -> torch.Tensor:
    """Depthwise filtering of every channel with `kernel` (`fir_kernel`), after zero padding `pad` on each side."""
    return F.conv2d(F.pad(x, (pad, pad, pad, pad)), kernel.to(x.dtype), groups=kernel.shape[0])


def upsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x up-sampling by zero insertion and the FIR low-pass (upfirdn2d's up=2): [H, W] -> [2H, 2W].

    One transposed convolution with stride 2 inserts the zeros and filters; padding 1 crops the full
    output (2H + 2) to upfirdn2d's 2H samples. `kernel`: `fir_kernel(channels, gain=4)`.
    """
    return F.conv_transpose2d(x, kernel.to(x.dtype), stride=2, padding=1, groups=kernel.shape[0])


class EqualLinear(nn.Module):
    """A fully connected layer with equalised learning rate (Karras et al. 2018).

    The weight is stored as N(0, 1) / lr_multiplier and scaled by lr_multiplier / sqrt(fan_in) at
    every forward: the forward sees He-initialised weights, while Adam's steps on the stored
    parameter move the effective weight lr_multiplier times as far (0.01 in the mapping network).
    """

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """A convolution with equalised learning rate; `down` halves the resolution (FIR low-pass, then stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.activation, self.down, self.kernel_size = activation, down, kernel_size
        if down:
            self.register_buffer("fir", fir_kernel(in_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        if self.down:
            # (FIR taps - 2) + (k - 1) samples of padding in all, split evenly: [H, W] -> [H/2, W/2]
            x = fir_filter(x, self.fir, (len(FIR_TAPS) - 2 + self.kernel_size - 1) // 2)
            x = F.conv2d(x, weight, self.bias, stride=2)
        else:
            x = F.conv2d(x, weight, self.bias, padding=self.kernel_size // 2)
        return lrelu(x) if self.activation else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool = True,
                     up: bool = False, fir: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated convolution (Karras et al. 2020): weight'[b,o,i] = weight[o,i] * styles[b,i], divided by
    ||weight'[b,o]|| when demodulating, so every output map has unit variance for unit-variance input.

    x [B, I, H, W], weight [O, I, k, k], styles [B, I]. `up` doubles the resolution: a stride-2 transposed
    convolution followed by the FIR low-pass `fir` (gain 4), as stylegan2-ada-pytorch's conv2d_resample.
    """
    x = x * styles[:, :, None, None]
    if up:
        x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)  # 2H + k - 2 samples
        x = fir_filter(x, fir, (len(FIR_TAPS) + 1 - weight.shape[-1]) // 2)  # -> 2H (fir: O channels, gain 4)
    else:
        x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
    if demodulate:
        # sum over i, kh, kw of (weight[o,i] styles[b,i])^2 = styles^2 @ (sum over kh, kw of weight^2)^T
        dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()  # [B, O]
        x = x * dcoefs[:, :, None, None]
    return x


class MinibatchStd(nn.Module):
    """Appends the mean standard deviation over groups of `group_size` consecutive images (one channel).

    Groups are consecutive images, so a batch laid out as cat(real, fake) with both halves divisible by
    the group size (the config checks data.batch_size) never mixes real and fake images in one group
    (stylegan2-ada-pytorch strides the groups across the batch instead; it scores reals and fakes in
    separate forwards).
    """

    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, C, H, W = x.shape
        group = math.gcd(self.group_size, x.shape[0])  # = group_size for the batches training uses
        y = x.reshape(-1, group, C, H, W)
        y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)  # [n, C, H, W] variance over the group
        y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [n]
        y = y.repeat_interleave(group)[:, None, None, None].expand(-1, 1, H, W)
        return torch.cat([x, y.to(x.dtype)], dim=1)
