"""The MLP family (`model.arch: mlp`): fully connected G and D for any image shape; the baseline of
Goodfellow et al. 2014, with G's BatchNorms (conditional ones for a conditional model)."""

from __future__ import annotations

import torch.nn as nn

from distgan.models.discriminator import Discriminator, add_spectral_norms
from distgan.models.family import Family
from distgan.models.generator import Generator
from distgan.models.layers import init_weights
from distgan.models.specs import DiscriminatorSpec, GeneratorSpec, ModelConfig


def mlp_generator_net(latent_dim: int, hidden: int, channels: int, height: int, width: int) -> nn.Sequential:
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


def mlp_discriminator_parts(spec: DiscriminatorSpec) -> tuple[nn.Sequential, nn.Module, int]:
    """(features, head, feature width)."""
    layers: list[nn.Module] = [nn.Flatten()]
    dims = (spec.channels * spec.height * spec.width, 2 * spec.mlp_hidden, spec.mlp_hidden)
    for in_dim, out_dim in zip(dims, dims[1:]):
        layers += [nn.Linear(in_dim, out_dim), nn.LeakyReLU(0.2)]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
    return nn.Sequential(*layers), nn.Linear(spec.mlp_hidden, 1), spec.mlp_hidden


def generator_from_layers(spec: GeneratorSpec, net: nn.Sequential) -> Generator:
    """A layer-stack G, DCGAN-initialised."""
    generator = Generator(spec, net)
    generator.apply(init_weights)
    return generator


def discriminator_from_parts(spec: DiscriminatorSpec, parts: tuple[nn.Module, nn.Module, int]) -> Discriminator:
    """A features + head D, DCGAN-initialised, with spectral norm on every layer if the spec asks."""
    discriminator = Discriminator(spec, *parts)
    discriminator.apply(init_weights)
    return add_spectral_norms(discriminator) if spec.spectral_norm else discriminator


class LayerStackFamily(Family):
    """What mlp and dcgan share: `GeneratorSpec` / `DiscriminatorSpec`, DCGAN init, a "z (+ labels)" G."""

    config = ModelConfig
    generator_spec = GeneratorSpec
    discriminator_spec = DiscriminatorSpec

    def make_generator_spec(self, cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> GeneratorSpec:
        self.check(cfg, shape, num_classes)
        return GeneratorSpec.from_config(cfg, *shape, num_classes)

    def make_discriminator_spec(self, cfg: ModelConfig, shape: tuple[int, int, int],
                                num_classes: int) -> DiscriminatorSpec:
        self.check(cfg, shape, num_classes)
        return DiscriminatorSpec.from_config(cfg, *shape, num_classes)


class MLPFamily(LayerStackFamily):
    name = "mlp"

    def build_generator(self, spec: GeneratorSpec) -> Generator:
        return generator_from_layers(spec, mlp_generator_net(spec.nz, spec.mlp_hidden, spec.channels, spec.height,
                                                             spec.width))

    def build_discriminator(self, spec: DiscriminatorSpec) -> Discriminator:
        return discriminator_from_parts(spec, mlp_discriminator_parts(spec))

    def d_batchnorm(self, cfg: ModelConfig) -> bool:
        return False  # the MLP's D has none

    def export_module(self, generator: Generator) -> Generator:
        from distgan.export.rewrite import inference_generator  # export's code; training never imports it

        return inference_generator(generator)


FAMILY = MLPFamily()
