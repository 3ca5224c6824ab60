"""The generator rewritten for inference: the same function, in layers ONNX runtimes run fast.

Three rewrites, each exact up to float rounding (export checks parity against the
original generator):

- **BatchNorm folded** into the Linear / Conv / ConvTranspose before it (also through the
  Unflatten of DCGAN-28's first layer); of a conditional BatchNorm only the per-class affine
  stays (two Gathers, a Mul and an Add). onnxruntime fuses Conv + BatchNorm itself, but not
  ConvTranspose + BatchNorm nor BatchNorm after a Reshape, and other runtimes may fuse none.
- **ConvTranspose on a 1x1 input** (DCGAN-64's first layer) as a Linear: a per-image GEMV
  in onnxruntime's ConvTranspose, one batched GEMM as a Linear.
- **Stride-2 ConvTranspose(4, 2, 1) as a sub-pixel convolution**: one 2x2 Conv with four
  times the output channels (one group per output phase), the four phases sliced out and
  interleaved by DepthToSpace. onnxruntime's ConvTranspose is a GEMM plus a single-threaded
  col2im and has no int8 kernel (a quantised one runs in fp32 between Q/DQ nodes); a Conv
  gets onnxruntime's blocked NCHWc kernels in fp32 and QLinearConv in int8. The cost is
  (H+1)^2/H^2 more multiply-adds (1.56x at 4x4, 1.06x at 32x32; 1.31x over DCGAN-64):
  measured, DCGAN-64 at batch 64 still runs 1.9x faster in fp32 (BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from distgan.models import ConditionalBatchNorm, Generator

_ACTIVATIONS = (nn.ReLU, nn.Tanh)


class SubPixelConvTranspose(nn.Module):
    """ConvTranspose2d(k=4, stride=2, padding=1) [+ activation] as Conv2d(k=2, padding=1) + DepthToSpace.

    Output pixel (2m + ry, 2n + rx) of the transposed convolution only sees input rows
    m - 1 + ry .. m + ry and columns n - 1 + rx .. n + rx, through kernel taps
    3 - ry - 2t (t = 0, 1) of the flipped kernel: a 2x2 correlation per phase (ry, rx).
    One padded 2x2 convolution computes all four phases on an (H+1) x (W+1) grid; phase
    (ry, rx) is the H x W window starting at (ry, rx).
    """

    def __init__(self, layer: nn.ConvTranspose2d, activation: nn.Module | None):
        super().__init__()
        w = layer.weight.detach()  # [in, out, 4, 4]
        out = w.shape[1]
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros(out)
        flipped = w.flip(2, 3)
        phases = [flipped[:, :, ry::2, rx::2].transpose(0, 1) for ry in (0, 1) for rx in (0, 1)]
        # Channel o * 4 + phase: the order pixel_shuffle (DepthToSpace, CRD) interleaves.
        self.conv = nn.Conv2d(w.shape[0], out * 4, 2, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack(phases, 1).reshape(out * 4, w.shape[0], 2, 2))
            self.conv.bias.copy_(bias.repeat_interleave(4))
        self.activation = activation if activation is not None else nn.Identity()
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The activation is elementwise, so it goes before the interleave, where it fuses with the Conv.
        y = self.activation(self.conv(x))
        window = (slice(None, -1), slice(1, None))  # phase 0 starts at 0, phase 1 at 1; static, no Shape ops
        phases = [y[:, 2 * ry + rx::4, window[ry], window[rx]] for ry in (0, 1) for rx in (0, 1)]
        return F.pixel_shuffle(torch.stack(phases, 2).flatten(1, 2), 2)


def _is_subpixel_candidate(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.ConvTranspose2d) and layer.kernel_size == (4, 4) and layer.stride == (2, 2)
            and layer.padding == (1, 1) and layer.output_padding == (0, 0) and layer.dilation == (1, 1)
            and layer.groups == 1)


def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm, repeat: int) -> None:
    """Fold `bn` (eval statistics) into `layer` in place; `repeat` features of the layer per BN channel."""
    mean, var = (t.detach().repeat_interleave(repeat) for t in (bn.running_mean, bn.running_var))
    # Without its own affine (a conditional BatchNorm's norm part): scale 1, shift 0.
    scale = bn.weight.detach().repeat_interleave(repeat) if bn.weight is not None else torch.ones_like(mean)
    shift = bn.bias.detach().repeat_interleave(repeat) if bn.bias is not None else torch.zeros_like(mean)
    if isinstance(layer, nn.Linear):
        weight, bias = fuse_linear_bn_weights(layer.weight.detach(), _bias(layer), mean, var, bn.eps, scale, shift)
    else:
        weight, bias = fuse_conv_bn_weights(layer.weight.detach(), _bias(layer), mean, var, bn.eps, scale, shift,
                                            transpose=isinstance(layer, nn.ConvTranspose2d))
    layer.weight, layer.bias = weight, bias


def _bias(layer: nn.Module) -> torch.Tensor | None:
    return layer.bias.detach() if layer.bias is not None else None


def fold_batchnorm(layers: list[nn.Module]) -> list[nn.Module]:
    """Drop every BatchNorm, folded into the Linear / Conv / ConvTranspose before it (an Unflatten may sit between).

    A conditional BatchNorm folds its normalisation and keeps its per-class affine (`ClassAffine`).
    """
    out: list[nn.Module] = []
    for layer in layers:
        affine = None
        if isinstance(layer, ConditionalBatchNorm):
            layer, affine = layer.bn, layer.affine
        if not isinstance(layer, nn.modules.batchnorm._BatchNorm):
            out.append(layer)
            continue
        if layer.running_mean is None:
            raise ValueError(f"{layer}: BatchNorm without running statistics cannot be folded")
        unflatten = out[-1] if out and isinstance(out[-1], nn.Unflatten) else None
        target = out[-2] if unflatten is not None and len(out) > 1 else out[-1] if out else None
        if not isinstance(target, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            raise ValueError(f"{layer}: no Linear or convolution before it to fold into (found {target})")
        repeat = math.prod(unflatten.unflattened_size[1:]) if unflatten is not None else 1
        _fold(target, layer, repeat)
        if affine is not None:
            out.append(affine)
    return out


def _as_linear(layer: nn.ConvTranspose2d) -> list[nn.Module]:
    """Unflatten to [B, C, 1, 1] + ConvTranspose(k, stride 1, no padding) -> Linear + Unflatten."""
    w = layer.weight.detach()  # [in, out, kH, kW]; output pixel (y, x) of channel o is sum_i z_i w[i, o, y, x]
    linear = nn.Linear(w.shape[0], w[0].numel())
    with torch.no_grad():
        linear.weight.copy_(w.flatten(1).t())
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[1])
        linear.bias.copy_(bias.repeat_interleave(w.shape[2] * w.shape[3]))
    return [linear, nn.Unflatten(1, tuple(w.shape[1:]))]


def rewrite_layers(layers: list[nn.Module]) -> list[nn.Module]:
    """ConvTranspose layers as Linear or sub-pixel Conv (see the module docstring); other layers as they are."""
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        after = layers[i + 1] if i + 1 < len(layers) else None
        if (isinstance(layer, nn.ConvTranspose2d) and out and isinstance(out[-1], nn.Unflatten)
                and out[-1].unflattened_size[1:] == (1, 1) and layer.stride == (1, 1)
                and layer.padding == (0, 0) and layer.groups == 1):
            out[-1:] = _as_linear(layer)
        elif _is_subpixel_candidate(layer):
            activation = after if isinstance(after, _ACTIVATIONS) else None
            out.append(SubPixelConvTranspose(layer, activation))
            i += activation is not None
        else:
            out.append(layer)
        i += 1
    return out


def inference_generator(generator: Generator) -> Generator:
    """A copy of `generator` (eval mode) computing the same images with the rewritten layers."""
    fast = copy.deepcopy(generator).eval()
    fast.net = nn.Sequential(*rewrite_layers(fold_batchnorm(list(fast.net)))).eval()
    return fast
