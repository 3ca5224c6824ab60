"""A generator that is one layer stack: z (+ a label through conditional BatchNorm) -> images in [-1, 1].

The mlp and dcgan families build their G as this class around their own layers (`net`, so the
state-dict keys of older checkpoints stay `net.*`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from distgan.models.layers import LABEL_LAYERS, _conditional
from distgan.models.specs import ModelSpec


class Generator(nn.Module):
    """z [B, nz] (+ labels [B] int64 when conditional) -> images [B, C, H, W] in [-1, 1]."""

    def __init__(self, spec: ModelSpec, net: nn.Sequential):
        super().__init__()
        self.spec = spec
        self.conditional = spec.conditional
        # Conditional: the labels enter through the BatchNorms only (see distgan/models/__init__.py).
        self.net = _conditional(net, spec.num_classes) if spec.conditional else net

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # Checks on None are resolved at trace time, so they cost nothing in ONNX.
        if not self.conditional:
            if labels is not None:
                raise ValueError("labels given to an unconditional generator")
            return self.net(z)
        if labels is None:
            raise ValueError("this generator is conditional: pass labels (int64 class ids, shape [B])")
        x = z
        for layer in self.net:
            x = layer(x, labels) if isinstance(layer, LABEL_LAYERS) else layer(x)
        return x
