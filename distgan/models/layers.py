"""Layers and the initialisation shared by G and D."""

from __future__ import annotations

import torch
import torch.nn as nn


def init_weights(module: nn.Module) -> None:
    """DCGAN init (Radford et al. 2015): weights N(0, 0.02), BatchNorm scale N(1, 0.02), biases 0.

    Use with `model.apply(init_weights)` before adding spectral norm, so the
    power iteration starts from the weights the model will train with.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ClassAffine):  # the same init, per class
        nn.init.normal_(module.scale.weight, 1.0, 0.02)
        nn.init.zeros_(module.shift.weight)


class ClassAffine(nn.Module):
    """x * scale[label] + shift[label], per channel: the affine part of a conditional BatchNorm."""

    def __init__(self, num_classes: int, num_features: int):
        super().__init__()
        self.scale = nn.Embedding(num_classes, num_features)
        self.shift = nn.Embedding(num_classes, num_features)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # [B, C] -> [B, C, 1, 1] from the embedding's own shape: a view sized by x.shape[0] froze
        # the export's batch size.
        spatial = (1,) * (x.dim() - 2)
        scale, shift = (t.reshape(t.shape + spatial) for t in (self.scale(labels), self.shift(labels)))
        return x * scale + shift


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine, then a per-class one (de Vries et al. 2017).

    What gets normalised is driven by z alone at G's first layer, so the variance
    BatchNorm restores there is z's; a label can only scale and shift it.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, num_classes: int):
        super().__init__()
        self.bn = type(bn)(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=False)
        self.affine = ClassAffine(num_classes, bn.num_features)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.affine(self.bn(x), labels)


# Layers of a conditional G that take the labels as a second input.
LABEL_LAYERS = (ConditionalBatchNorm, ClassAffine)


def _conditional(layers: nn.Sequential, num_classes: int) -> nn.Sequential:
    """Every BatchNorm of `layers` made conditional."""
    return nn.Sequential(*[
        ConditionalBatchNorm(m, num_classes) if isinstance(m, nn.modules.batchnorm._BatchNorm) else m
        for m in layers
    ])
