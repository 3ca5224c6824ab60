"""The discriminator: images (+ a label through a projection) -> logits."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm

from distgan.models.layers import init_weights
from distgan.models.specs import ARCHS, DiscriminatorSpec, ModelConfig

def _down_block(in_ch: int, out_ch: int, *, batchnorm: bool, dropout: float) -> list[nn.Module]:
    """Halve the resolution: Conv(4, stride 2, pad 1) [+ BatchNorm] + LeakyReLU(0.2) [+ Dropout]."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.LeakyReLU(0.2))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


# Each builder returns (features, head, channels of the features): the head reads
# the whole last feature map, the class projection its channels (see the module doc).


def _mlp_discriminator(
    channels: int, height: int, width: int, hidden: int, dropout: float
) -> tuple[nn.Sequential, nn.Module, int]:
    layers: list[nn.Module] = [nn.Flatten()]
    for in_dim, out_dim in ((channels * height * width, 2 * hidden), (2 * hidden, hidden)):
        layers += [nn.Linear(in_dim, out_dim), nn.LeakyReLU(0.2)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers), nn.Linear(hidden, 1), hidden


def _dcgan28_discriminator(
    channels: int, ndf: int, batchnorm: bool, dropout: float
) -> tuple[nn.Sequential, nn.Module, int]:
    features = nn.Sequential(
        *_down_block(channels, ndf, batchnorm=False, dropout=dropout),  # 28 -> 14
        *_down_block(ndf, ndf * 2, batchnorm=batchnorm, dropout=dropout),  # 14 -> 7
    )
    return features, nn.Sequential(nn.Flatten(), nn.Linear(ndf * 2 * 7 * 7, 1)), ndf * 2


def _dcgan64_discriminator(
    channels: int, ndf: int, batchnorm: bool, dropout: float
) -> tuple[nn.Sequential, nn.Module, int]:
    features = nn.Sequential(
        *_down_block(channels, ndf, batchnorm=False, dropout=dropout),  # 64 -> 32
        *_down_block(ndf, ndf * 2, batchnorm=batchnorm, dropout=dropout),  # 32 -> 16
        *_down_block(ndf * 2, ndf * 4, batchnorm=batchnorm, dropout=dropout),  # 16 -> 8
        *_down_block(ndf * 4, ndf * 8, batchnorm=batchnorm, dropout=dropout),  # 8 -> 4
    )
    return features, nn.Conv2d(ndf * 8, 1, 4, 1, 0), ndf * 8


class Discriminator(nn.Module):
    """images [B, C, H, W] (+ labels [B] when conditional) -> logits [B]."""

    def __init__(self, spec: DiscriminatorSpec):
        super().__init__()
        self.spec = spec
        if spec.arch == "mlp":
            self.features, self.head, phi_dim = _mlp_discriminator(
                spec.channels, spec.height, spec.width, spec.mlp_hidden, spec.dropout
            )
        elif spec.arch == "dcgan28":
            self.features, self.head, phi_dim = _dcgan28_discriminator(spec.channels, spec.ndf, spec.batchnorm,
                                                                       spec.dropout)
        elif spec.arch == "dcgan64":
            self.features, self.head, phi_dim = _dcgan64_discriminator(spec.channels, spec.ndf, spec.batchnorm,
                                                                       spec.dropout)
        else:
            raise ValueError(f"unknown arch {spec.arch!r}; valid: {', '.join(ARCHS)}")
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


def build_discriminator(
    cfg: ModelConfig, channels: int, height: int, width: int, num_classes: int
) -> Discriminator:
    """A DCGAN-initialised discriminator, with spectral norm on every conv/linear/embedding if asked."""
    return discriminator_from_spec(DiscriminatorSpec.from_config(cfg, channels, height, width, num_classes))


def discriminator_from_spec(spec: DiscriminatorSpec | dict[str, Any]) -> Discriminator:
    discriminator = Discriminator(spec if isinstance(spec, DiscriminatorSpec) else DiscriminatorSpec.from_dict(spec))
    discriminator.apply(init_weights)
    if discriminator.spec.spectral_norm:
        for module in list(discriminator.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                add_spectral_norm(module)
    return discriminator
