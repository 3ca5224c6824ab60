"""The one description of each network: `ModelConfig` (the config's section), `GeneratorSpec` and
`DiscriminatorSpec` (what builds, saves, loads, exports and evaluates G and D), and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

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


class _Spec:
    """JSON in and out, for the spec dataclasses below: every key checked on the way in, errors name it."""

    KIND = ""

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        return _spec_from_dict(cls, spec, cls.KIND)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GeneratorSpec(_Spec):
    """Everything that fixes G's architecture: what builds, saves, loads, exports and evaluates it."""

    KIND = "generator"
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


@dataclass(frozen=True)
class DiscriminatorSpec(_Spec):
    """Everything that fixes D's architecture (saved with every checkpoint as discriminator.json)."""

    KIND = "discriminator"
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


