"""The generator rewritten for inference: the same function, in layers ONNX runtimes run fast.

Rewrites, each exact up to float rounding (export checks parity against the original
generator):

- **BatchNorm folded** into the Linear / Conv / ConvTranspose before it (also through the
  Unflatten of DCGAN-28's first layer); of a conditional BatchNorm only the per-class affine
  stays (two Gathers, a Mul and an Add). onnxruntime fuses Conv + BatchNorm itself, but not
  ConvTranspose + BatchNorm nor BatchNorm after a Reshape, and other runtimes may fuse none.
- **ConvTranspose on a 1x1 input** (DCGAN-64's first layer) as a Linear: a per-image GEMV
  in onnxruntime's ConvTranspose, one batched GEMM as a Linear.
- **Linear, Unflatten, ReLU as Linear, ReLU, Unflatten**: the ReLU is elementwise, and next
  to the Gemm onnxruntime fuses it (FusedGemm) instead of running it as a node of its own.
- **Stride-2 ConvTranspose(4, 2, 1) as phase convolutions** (`phases.py`): four exact 2x2
  Convs interleaved by rows (Concats) where the channel count fits onnxruntime's NCHWc blocks,
  else one padded 2x2 Conv, an NHWC interleave and a one-pixel crop. onnxruntime's
  ConvTranspose is a GEMM plus a single-threaded col2im and has no int8 kernel (a
  quantised one runs in fp32 between Q/DQ nodes); a Conv gets onnxruntime's blocked NCHWc
  kernels in fp32 and QLinearConv in int8.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from distgan.export.phases import PaddedPhaseConvTranspose, PhaseConvTranspose, is_phase_candidate
from distgan.models import LABEL_LAYERS, ConditionalBatchNorm, Generator

_ACTIVATIONS = (nn.ReLU, nn.Tanh)
# The exact four-Conv form when the channels fill whole NCHWc blocks of onnxruntime's widest
# vector width (16 floats, AVX-512; 8 on AVX2); the Concat of the phases then stays blocked.
EXACT_PHASE_CHANNELS = 16


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


class Reshape(nn.Module):
    """[B, ...] -> [B, *shape] with the shape as constants: nn.Unflatten exports a Shape/Slice/Concat chain."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)


def _static(layer: nn.Module) -> nn.Module:
    """An Unflatten of a [B, N] tensor's features as a Reshape with constant sizes; any other layer as it is."""
    if isinstance(layer, nn.Unflatten) and layer.dim == 1:
        return Reshape(layer.unflattened_size)
    return layer


def input_sizes(layers: list[nn.Module], latent_dim: int) -> list[tuple[int, int] | None]:
    """The spatial size (H, W) of each layer's input (None where it is not an image), from one dummy pass."""
    sizes: list[tuple[int, int] | None] = []
    x, labels = torch.zeros(1, latent_dim), torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        for layer in layers:
            sizes.append(tuple(x.shape[2:]) if x.dim() == 4 else None)
            x = layer(x, labels) if isinstance(layer, LABEL_LAYERS) else layer(x)
    return sizes


def _phase_form(layer: nn.ConvTranspose2d, activation: nn.Module | None, size: tuple[int, int]) -> nn.Module:
    # The image layer (before tanh) stays one Conv whatever its channels: the int8 scheme keeps "the
    # last layer" in fp32 and finds it as the last Conv of the graph (quantize.py).
    exact = layer.out_channels % EXACT_PHASE_CHANNELS == 0 and not isinstance(activation, nn.Tanh)
    return (PhaseConvTranspose if exact else PaddedPhaseConvTranspose)(layer, activation, size)


def rewrite_layers(layers: list[nn.Module], latent_dim: int) -> list[nn.Module]:
    """ConvTranspose layers as Linear or phase Convs (see the module docstring); other layers as they are.

    `latent_dim` is the width of the input to `layers` (the phase forms need their input's size)."""
    sizes = input_sizes(layers, latent_dim)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        after = layers[i + 1] if i + 1 < len(layers) else None
        if (isinstance(layer, nn.ConvTranspose2d) and out and isinstance(out[-1], nn.Unflatten)
                and out[-1].unflattened_size[1:] == (1, 1) and layer.stride == (1, 1)
                and layer.padding == (0, 0) and layer.groups == 1):
            out[-1:] = _as_linear(layer)
        elif is_phase_candidate(layer):
            activation = after if isinstance(after, _ACTIVATIONS) else None
            out.append(_phase_form(layer, activation, sizes[i]))
            i += activation is not None
        elif isinstance(layer, nn.ReLU) and len(out) > 1 and isinstance(out[-1], nn.Unflatten) \
                and isinstance(out[-2], nn.Linear):
            out.insert(-1, layer)  # elementwise: before the Unflatten it sits next to the Gemm it fuses with
        else:
            out.append(layer)
        i += 1
    return [_static(layer) for layer in out]


def inference_generator(generator: Generator) -> Generator:
    """A copy of `generator` (eval mode) computing the same images with the rewritten layers."""
    fast = copy.deepcopy(generator).eval()
    fast.net = nn.Sequential(*rewrite_layers(fold_batchnorm(list(fast.net)), generator.spec.nz)).eval()
    return fast
