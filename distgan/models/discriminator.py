"""A discriminator of features, a head and a class projection: images (+ a label) -> logits.

The mlp, dcgan and resnet families build their D as this class around their own `features` and `head`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm

from distgan.models.specs import ModelSpec


class Discriminator(nn.Module):
    """images [B, C, H, W] (+ labels [B] when conditional) -> logits [B].

    `features` gives h(x) (a map [B, phi_dim, h, w] or a vector [B, phi_dim]), `head` reads all of it; the
    class term is <embed(y), phi(x)> with phi(x) = h(x) summed over positions (see distgan/models/__init__.py).
    """

    def __init__(self, spec: ModelSpec, features: nn.Module, head: nn.Module, phi_dim: int):
        super().__init__()
        self.spec = spec
        self.features, self.head = features, head
        # One weight per class and channel of the pooled features phi(x), not per position.
        self.projection = nn.Embedding(spec.num_classes, phi_dim) if spec.conditional else None
        if self.projection is not None:
            # N(0, 0.02) like every other weight of D (DCGAN init). phi(x) sums H*W positions, so at
            # init this term is a few times the head's (std 0.17 vs 0.02 logits for dcgan28, ndf 64, on
            # Fashion-MNIST), both far below the ~1 logit where the losses bend; and under Adam a step
            # moves either term by about lr x the summed |features|, so neither outpaces the other.
            nn.init.normal_(self.projection.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.projection is None and labels is not None:
            raise ValueError("labels given to an unconditional discriminator")
        if self.projection is not None and labels is None:
            raise ValueError("this discriminator is conditional: pass labels (int64 class ids, shape [B])")
        h = self.features(x)
        # float32 whatever the autocast dtype: B numbers cost nothing and the losses want the precision.
        logits = self.head(h).flatten().float()
        if self.projection is None:
            return logits
        # phi(x): global sum pooling over H, W (Miyato & Koyama 2018); the MLP's features are already a vector.
        pooled = h.sum(dim=(2, 3)) if h.dim() == 4 else h
        return logits + (self.projection(labels) * pooled.float()).sum(dim=1)


def add_spectral_norms(module: nn.Module) -> nn.Module:
    """Spectral norm on every Conv2d, Linear and Embedding of `module` (after its init, so the power
    iteration starts from the weights it will train with)."""
    for layer in list(module.modules()):
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.Embedding)):
            add_spectral_norm(layer)
    return module
