"""Stride-2 ConvTranspose(4, 2, 1) as plain convolutions, in the shape onnxruntime runs fastest on a CPU.

Output pixel (2m + ry, 2n + rx) of the transposed convolution sees only input rows
m - 1 + ry .. m + ry and columns n - 1 + rx .. n + rx, through kernel taps 3 - ry - 2t
(t = 0, 1) of the flipped kernel: each output *phase* (ry, rx) is a 2x2 correlation of
the input. Two forms (BENCHMARKS.md, "CPU inference", has the measurements):

- `PhaseConvTranspose`, exact: one 2x2 Conv per phase, each with the asymmetric padding
  that puts its window in place (exported as Pad + Conv; onnxruntime folds the Pad into
  the Conv), the two of each row parity concatenated along channels. Exactly the transposed
  convolution's multiply-adds. onnxruntime keeps the four Convs and the Concats in its blocked NCHWc
  layout when the channel count is a multiple of its block (8 with AVX2, 16 with
  AVX-512), so this form is used for those layers.
- `PaddedPhaseConvTranspose`: one 2x2 Conv with padding 1 computes all four phases on an
  (H+1) x (W+1) grid, interleaved into a (2H+2) x (2W+2) image whose one-pixel border is
  cropped. (H+1)^2 / H^2 more multiply-adds, but one Conv: for narrow layers (the last,
  3 channels) four Convs would each be padded to a whole channel block.

Both interleave the phases in NHWC instead of with DepthToSpace on NCHW: onnxruntime turns
the NCHW <-> NHWC transposes next to a Conv into its NCHWc reorders (ReorderOutput /
ReorderInput with channels_last), and the interleave then moves contiguous runs of
floats; DepthToSpace (CRD) on NCHW moves single floats and, with the slices and Concat
of the former sub-pixel form, was ~30% of onnxruntime's time on DCGAN-64.

The exact form interleaves by rows (`interleave_rows`): the two phases of a row parity ry
are concatenated along channels, which in NHWC *is* their interleave along the width, so
the only op left is one Concat that stacks the two row parities, where `interleave_phases`
(which the padded form keeps: its one Conv gives all four phases in one tensor) needs a
Transpose. On DCGAN-64 at batch 64 (onnxruntime profile, 2 threads) the data movement of
the 16x16 -> 32x32 layer fell from 9.0 to 6.9 ms and the whole model ran 1-8% faster
(BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))  # (ry, rx), row-major: the channel order both interleaves expect


def is_phase_candidate(layer: nn.Module) -> bool:
    """A ConvTranspose2d(k=4, stride=2, padding=1) without groups, dilation or output padding."""
    return (isinstance(layer, nn.ConvTranspose2d) and layer.kernel_size == (4, 4) and layer.stride == (2, 2)
            and layer.padding == (1, 1) and layer.output_padding == (0, 0) and layer.dilation == (1, 1)
            and layer.groups == 1)


def phase_kernels(layer: nn.ConvTranspose2d) -> dict[tuple[int, int], torch.Tensor]:
    """Phase (ry, rx) -> its 2x2 correlation kernel [out, in, 2, 2]."""
    flipped = layer.weight.detach().flip(2, 3)  # [in, out, 4, 4]
    return {(ry, rx): flipped[:, :, ry::2, rx::2].transpose(0, 1).contiguous() for ry, rx in PHASES}


def _bias(layer: nn.ConvTranspose2d) -> torch.Tensor:
    return layer.bias.detach() if layer.bias is not None else torch.zeros(layer.out_channels)


def interleave_phases(y: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """NCHW [B, 4C, h, w] with phase-major channels (phase * C + c) -> NHWC [B, 2h, 2w, C], pixel (2i + ry, 2j + rx)
    from phase (ry, rx) at (i, j). Sizes are static ints so the export has constant shapes (B stays dynamic)."""
    y = y.permute(0, 2, 3, 1).reshape(-1, width, 2, 2 * channels)  # rows [B*h, w, ry, (rx, c)]
    return y.transpose(1, 2).reshape(-1, 2 * height, 2 * width, channels)


def interleave_rows(rows: list[torch.Tensor], channels: int, height: int, width: int) -> torch.Tensor:
    """Row parities ry = 0, 1, each NCHW [B, 2C, h, w] with channels rx * C + c -> NHWC [B, 2h, 2w, C].

    In NHWC a row parity is already interleaved along the width ([B, h, w, (rx, c)]); stacking
    the two parities between h and w interleaves the rows."""
    nhwc = [row.permute(0, 2, 3, 1) for row in rows]
    return torch.stack(nhwc, 2).reshape(-1, 2 * height, 2 * width, channels)


class PhaseConvTranspose(nn.Module):
    """ConvTranspose2d(4, 2, 1) [+ elementwise activation] as four exact 2x2 phase convolutions, interleaved by rows."""

    def __init__(self, layer: nn.ConvTranspose2d, activation: nn.Module | None, size: tuple[int, int]):
        super().__init__()
        kernels = phase_kernels(layer)
        self.convs = nn.ModuleList()
        for phase in PHASES:
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, 2)
            with torch.no_grad():
                conv.weight.copy_(kernels[phase])
                conv.bias.copy_(_bias(layer))
            self.convs.append(conv)
        # Padding (left, right, top, bottom) that puts phase (ry, rx)'s window at rows m - 1 + ry .. m + ry.
        self.pads = [(1 - rx, rx, 1 - ry, ry) for ry, rx in PHASES]
        self.activation = activation if activation is not None else nn.Identity()
        self.out_channels, self.size = layer.out_channels, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The activation is elementwise: applied per phase, it fuses into each Conv.
        y = [self.activation(conv(F.pad(x, pad))) for conv, pad in zip(self.convs, self.pads)]
        rows = [torch.cat(y[2 * ry:2 * ry + 2], 1) for ry in (0, 1)]  # PHASES is row-major
        return interleave_rows(rows, self.out_channels, *self.size).permute(0, 3, 1, 2)


class PaddedPhaseConvTranspose(nn.Module):
    """ConvTranspose2d(4, 2, 1) [+ elementwise activation] as one padded 2x2 Conv, one interleave and one crop.

    Grid position p of the padded convolution sees input rows p - 1 .. p, which is the window
    of output row 2p - 1 (phase 1) and of output row 2p (phase 0); interleaved as sub-pixel
    s = 1 - r, output row Y lands at 2p + s = Y + 1, so the result is the interleave cropped
    by one pixel on every side.
    """

    def __init__(self, layer: nn.ConvTranspose2d, activation: nn.Module | None, size: tuple[int, int]):
        super().__init__()
        kernels = phase_kernels(layer)
        self.conv = nn.Conv2d(layer.in_channels, layer.out_channels * 4, 2, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([kernels[(1 - sy, 1 - sx)] for sy, sx in PHASES]))
            self.conv.bias.copy_(_bias(layer).repeat(4))
        self.activation = activation if activation is not None else nn.Identity()
        self.out_channels, self.size = layer.out_channels, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.size
        y = interleave_phases(self.activation(self.conv(x)), self.out_channels, height + 1, width + 1)
        return y[:, 1:2 * height + 1, 1:2 * width + 1].permute(0, 3, 1, 2)
