"""The DCGAN family (`model.arch: dcgan`, Radford et al. 2015) at 28, 32, 64, 128 and 256 px.

The depth follows the data's height and width (square images):
- 28 (MNIST-like): z -> Linear -> 7x7 -> 14x14 -> 28x28 (ngf*4, *2, *1 channels), D 28 -> 14 -> 7 + Linear;
- 2^k: z -> ConvTranspose(4) -> 4x4 -> ... -> 2^k, stride-2 ConvTranspose(4, 2, 1) blocks, the widest
  level ngf * min(2^(k-3), 16) channels halving up to ngf, D the mirror image down to 4x4 + Conv(4).
`dcgan28` and `dcgan64` (the names of earlier versions) are this family at 28 and 64 px: their
checkpoints and ONNX files load unchanged and give the same images.
"""

from __future__ import annotations

import math

import torch.nn as nn

from distgan.models.family import check_common
from distgan.models.mlp import LayerStackFamily, discriminator_from_parts, generator_from_layers
from distgan.models.specs import DiscriminatorSpec, GeneratorSpec, ModelConfig

RESOLUTIONS = (28, 32, 64, 128, 256)
ALIAS_RESOLUTION = {"dcgan28": 28, "dcgan64": 64}  # older arch names, each fixed to its size
MAX_MULT = 16  # the widest level: ngf (ndf) x 16


def _up_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Double the resolution: ConvTranspose(4, stride 2, pad 1) + BatchNorm + ReLU."""
    return [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]


def _down_block(in_ch: int, out_ch: int, *, batchnorm: bool, dropout: float) -> list[nn.Module]:
    """Halve the resolution: Conv(4, stride 2, pad 1) [+ BatchNorm] + LeakyReLU(0.2) [+ Dropout]."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.LeakyReLU(0.2))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


def level_mults(resolution: int) -> list[int]:
    """Width multipliers of the 4x4 .. resolution/2 levels of a 2^k network, widest first."""
    levels = int(math.log2(resolution)) - 2  # 4x4 .. resolution/2
    return [min(2 ** (levels - 1 - i), MAX_MULT) for i in range(levels)]


def generator_net(latent_dim: int, ngf: int, channels: int, resolution: int) -> nn.Sequential:
    if resolution == 28:
        return nn.Sequential(
            nn.Linear(latent_dim, ngf * 4 * 7 * 7, bias=False),
            nn.Unflatten(1, (ngf * 4, 7, 7)),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(),
            *_up_block(ngf * 4, ngf * 2),  # 7 -> 14
            *_up_block(ngf * 2, ngf),  # 14 -> 28
            nn.Conv2d(ngf, channels, 3, 1, 1),
            nn.Tanh(),
        )
    widths = [ngf * m for m in level_mults(resolution)]
    layers: list[nn.Module] = [nn.Unflatten(1, (latent_dim, 1, 1)),
                               nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),  # 1 -> 4
                               nn.BatchNorm2d(widths[0]), nn.ReLU()]
    for in_ch, out_ch in zip(widths, widths[1:]):
        layers += _up_block(in_ch, out_ch)
    return nn.Sequential(*layers, nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh())


def discriminator_parts(spec: DiscriminatorSpec) -> tuple[nn.Sequential, nn.Module, int]:
    """(features, head, feature channels): the head reads the whole last map, the class projection its channels."""
    ndf, bn, dropout = spec.ndf, spec.batchnorm, spec.dropout
    if spec.height == 28:
        features = nn.Sequential(
            *_down_block(spec.channels, ndf, batchnorm=False, dropout=dropout),  # 28 -> 14
            *_down_block(ndf, ndf * 2, batchnorm=bn, dropout=dropout),  # 14 -> 7
        )
        return features, nn.Sequential(nn.Flatten(), nn.Linear(ndf * 2 * 7 * 7, 1)), ndf * 2
    widths = [ndf * m for m in reversed(level_mults(spec.height))]  # resolution/2 .. 4x4
    layers = _down_block(spec.channels, widths[0], batchnorm=False, dropout=dropout)
    for in_ch, out_ch in zip(widths, widths[1:]):
        layers += _down_block(in_ch, out_ch, batchnorm=bn, dropout=dropout)
    return nn.Sequential(*layers), nn.Conv2d(widths[-1], 1, 4, 1, 0), widths[-1]


class DCGANFamily(LayerStackFamily):
    name = "dcgan"
    aliases = tuple(ALIAS_RESOLUTION)

    def check(self, cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> None:
        check_common(cfg, shape, num_classes)
        channels, height, width = shape
        if cfg.arch in ALIAS_RESOLUTION:
            size = ALIAS_RESOLUTION[cfg.arch]
            if (height, width) != (size, size):
                fits = [a for a, s in ALIAS_RESOLUTION.items() if (s, s) == (height, width)]
                hint = fits[0] if fits else "dcgan" if height == width and height in RESOLUTIONS else "mlp"
                raise ValueError(f"model.arch {cfg.arch!r} needs {size}x{size} images but the data is "
                                 f"{height}x{width} ({channels} channels); use arch {hint!r} for {height}x{width}")
        elif height != width or height not in RESOLUTIONS:
            raise ValueError(f"model.arch 'dcgan' builds square images of {', '.join(map(str, RESOLUTIONS))} px; "
                             f"the data is {height}x{width} (resize it, or use arch 'mlp')")

    def build_generator(self, spec: GeneratorSpec) -> nn.Module:
        return generator_from_layers(spec, generator_net(spec.nz, spec.ngf, spec.channels, spec.height))

    def build_discriminator(self, spec: DiscriminatorSpec) -> nn.Module:
        return discriminator_from_parts(spec, discriminator_parts(spec))

    def export_module(self, generator: nn.Module) -> nn.Module:
        from distgan.export.rewrite import inference_generator  # export's code; training never imports it

        return inference_generator(generator)


FAMILY = DCGANFamily()
