"""The generator: z (+ a label through conditional BatchNorm) -> images in [-1, 1]."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from distgan.models.layers import LABEL_LAYERS, _conditional, init_weights
from distgan.models.specs import ARCHS, GeneratorSpec, ModelConfig

def _mlp_generator(latent_dim: int, hidden: int, channels: int, height: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(latent_dim, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, 2 * hidden, bias=False),  # biases are redundant before BatchNorm
        nn.BatchNorm1d(2 * hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(2 * hidden, 4 * hidden, bias=False),
        nn.BatchNorm1d(4 * hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(4 * hidden, channels * height * width),
        nn.Tanh(),
        nn.Unflatten(1, (channels, height, width)),
    )


def _up_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Double the resolution: ConvTranspose(4, stride 2, pad 1) + BatchNorm + ReLU."""
    return [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]


def _dcgan28_generator(latent_dim: int, ngf: int, channels: int) -> nn.Sequential:
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


def _dcgan64_generator(latent_dim: int, ngf: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (latent_dim, 1, 1)),
        nn.ConvTranspose2d(latent_dim, ngf * 8, 4, 1, 0, bias=False),  # 1 -> 4
        nn.BatchNorm2d(ngf * 8),
        nn.ReLU(),
        *_up_block(ngf * 8, ngf * 4),  # 4 -> 8
        *_up_block(ngf * 4, ngf * 2),  # 8 -> 16
        *_up_block(ngf * 2, ngf),  # 16 -> 32
        nn.ConvTranspose2d(ngf, channels, 4, 2, 1),  # 32 -> 64
        nn.Tanh(),
    )


class Generator(nn.Module):
    """z [B, nz] (+ labels [B] int64 when conditional) -> images [B, C, H, W] in [-1, 1]."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        self.conditional = spec.conditional
        if spec.arch == "mlp":
            self.net = _mlp_generator(spec.nz, spec.mlp_hidden, spec.channels, spec.height, spec.width)
        elif spec.arch == "dcgan28":
            self.net = _dcgan28_generator(spec.nz, spec.ngf, spec.channels)
        elif spec.arch == "dcgan64":
            self.net = _dcgan64_generator(spec.nz, spec.ngf, spec.channels)
        else:
            raise ValueError(f"unknown arch {spec.arch!r}; valid: {', '.join(ARCHS)}")
        if spec.conditional:  # the labels enter through the BatchNorms only (see the module doc)
            self.net = _conditional(self.net, spec.num_classes)

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


def build_generator(cfg: ModelConfig, channels: int, height: int, width: int, num_classes: int) -> Generator:
    """A DCGAN-initialised generator for images of shape [channels, height, width]."""
    return generator_from_spec(GeneratorSpec.from_config(cfg, channels, height, width, num_classes))


def generator_from_spec(spec: GeneratorSpec | dict[str, Any]) -> Generator:
    """The architecture `spec` describes, DCGAN-initialised (ready for `load_state_dict`)."""
    generator = Generator(spec if isinstance(spec, GeneratorSpec) else GeneratorSpec.from_dict(spec))
    generator.apply(init_weights)
    return generator
