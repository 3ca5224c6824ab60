"""Generators and discriminators: an MLP GAN and two DCGANs (28x28 and 64x64).

- `mlp`: fully connected, any image shape; the baseline of Goodfellow et al. 2014.
- `dcgan28`: MNIST / Fashion-MNIST; z -> 7x7 -> 14x14 -> 28x28.
- `dcgan64`: CelebA; the stack of Radford et al. 2015, z -> 4x4 -> ... -> 64x64.

Conditional models feed the label to G through conditional BatchNorm (de Vries
et al. 2017; the G of Miyato & Koyama 2018): every BatchNorm of G normalises
without its own affine and a per-class scale and shift follow. G's input is z
alone. The label is *not* concatenated to z: G's BatchNorms restore the batch
variance of every channel, and in a batch of mixed classes a label code in the
input can supply all of it, so nothing kept z's share and G learnt to drop z
(one prototype per class). D is a projection discriminator
(Miyato & Koyama 2018): logit = psi(h(x)) + <embed(y), phi(x)>, with h(x) the
last feature map (after its activation), psi the unconditional head (the usual
DCGAN linear read-out of the whole map) and phi(x) = sum over H, W of h(x), one
number per channel, as in the paper. The class term must not see positions: an
embedding over the flattened map would be a per-class spatial template, which G
can satisfy by painting one prototype per class and ignoring z.

Each network has one spec (`GeneratorSpec`, `DiscriminatorSpec`): the only
description used to build, save, load, export and evaluate it, so a safetensors
file plus its spec (JSON) is a complete model; and the forward pass has no
data-dependent control flow so it exports to ONNX with a dynamic batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm

ARCHS = ("mlp", "dcgan28", "dcgan64")

# Image shape (height, width) each convolutional architecture is built for.
_ARCH_SHAPES = {"dcgan28": (28, 28), "dcgan64": (64, 64)}


@dataclass
class ModelConfig:
    arch: str = "dcgan28"  # "mlp" | "dcgan28" | "dcgan64"
    nz: int = 100  # latent size
    ngf: int = 64  # G width
    ndf: int = 64  # D width
    mlp_hidden: int = 256  # hidden width of the MLP GAN (G: h-2h-4h, D: 2h-h)
    conditional: bool = False  # class-conditional G and D
    spectral_norm: bool = False  # spectral norm on D layers
    d_batchnorm: bool = True  # BatchNorm in D's inner layers; off when spectral_norm
    d_dropout: float = 0.0  # dropout after each activation of D
    sync_bn: bool = False  # under DDP, BatchNorm statistics of the global batch (distgan.ddp.GlobalBatchNorm)


# --- validation ---------------------------------------------------------------------


def _check_model_inputs(cfg: ModelConfig, channels: int, height: int, width: int, num_classes: int) -> None:
    """Fail at build time, with the fix in the message, rather than with a shape error mid-forward."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown arch {cfg.arch!r}; valid: {', '.join(ARCHS)}")
    for name in ("nz", "ngf", "ndf", "mlp_hidden"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if min(channels, height, width) < 1:
        raise ValueError(f"image shape must be positive, got {channels}x{height}x{width}")
    if cfg.arch in _ARCH_SHAPES and (height, width) != _ARCH_SHAPES[cfg.arch]:
        fits = [a for a, shape in _ARCH_SHAPES.items() if shape == (height, width)] or ["mlp"]
        want_h, want_w = _ARCH_SHAPES[cfg.arch]
        raise ValueError(
            f"arch {cfg.arch!r} needs {want_h}x{want_w} images but the data is {height}x{width} "
            f"({channels} channels); use arch {fits[0]!r} for {height}x{width}"
        )
    if cfg.conditional and num_classes < 2:
        raise ValueError(f"a conditional model needs num_classes >= 2, got {num_classes}")
    if not 0.0 <= cfg.d_dropout < 1.0:
        raise ValueError(f"d_dropout must be in [0, 1), got {cfg.d_dropout}")


# --- initialisation ---------------------------------------------------------------


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


# --- generator --------------------------------------------------------------------


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


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything that fixes G's architecture: what builds, saves, loads, exports and evaluates it."""

    arch: str
    nz: int
    ngf: int
    mlp_hidden: int
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool

    @classmethod
    def from_config(cls, cfg: ModelConfig, channels: int, height: int, width: int, num_classes: int) -> GeneratorSpec:
        _check_model_inputs(cfg, channels, height, width, num_classes)
        return cls(arch=cfg.arch, nz=cfg.nz, ngf=cfg.ngf, mlp_hidden=cfg.mlp_hidden, channels=channels,
                   height=height, width=width, num_classes=num_classes, conditional=cfg.conditional)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> GeneratorSpec:
        """From JSON (generator.json, ONNX metadata); every key checked, errors name it."""
        return _spec_from_dict(cls, spec, "generator")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DiscriminatorSpec:
    """Everything that fixes D's architecture (saved with every checkpoint as discriminator.json)."""

    arch: str
    ndf: int
    mlp_hidden: int
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool
    batchnorm: bool
    dropout: float
    spectral_norm: bool

    @classmethod
    def from_config(cls, cfg: ModelConfig, channels: int, height: int, width: int,
                    num_classes: int) -> DiscriminatorSpec:
        _check_model_inputs(cfg, channels, height, width, num_classes)
        return cls(arch=cfg.arch, ndf=cfg.ndf, mlp_hidden=cfg.mlp_hidden, channels=channels, height=height,
                   width=width, num_classes=num_classes, conditional=cfg.conditional,
                   batchnorm=cfg.d_batchnorm and not cfg.spectral_norm,  # SN already bounds D; BN would fight it
                   dropout=cfg.d_dropout, spectral_norm=cfg.spectral_norm)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> DiscriminatorSpec:
        return _spec_from_dict(cls, spec, "discriminator")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _spec_from_dict(cls, spec: dict[str, Any], what: str):
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    kinds = {"str": str, "int": int, "bool": bool, "float": float}
    for key in spec:
        if key not in types:
            raise ValueError(f"{what} spec has unknown key {key!r}; expected keys: {', '.join(types)}")
    for key, type_name in types.items():
        if key not in spec:
            raise ValueError(f"{what} spec is missing key {key!r}")
        kind, value = kinds[type_name], spec[key]
        # bool is an int subclass; a spec from JSON never mixes them up, a hand-made one might.
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{what} spec key {key!r} must be {type_name}, got {value!r}")
    instance = cls(**spec)
    model_cfg = ModelConfig(arch=instance.arch, mlp_hidden=instance.mlp_hidden, conditional=instance.conditional)
    _check_model_inputs(model_cfg, instance.channels, instance.height, instance.width, instance.num_classes)
    return instance


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


# --- discriminator ----------------------------------------------------------------


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
