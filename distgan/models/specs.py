"""The one description of each network: `ModelConfig` (the config's section), `GeneratorSpec` and
`DiscriminatorSpec` (what builds, saves, loads, exports and evaluates G and D), and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

@dataclass
class ModelConfig:
    """The `model:` keys every family shares; a family adds its own in a subclass (its `Family.config`)."""

    arch: str = "dcgan28"  # a family's name (distgan.models.family): mlp | dcgan (dcgan28, dcgan64) | resnet
    nz: int = 100  # latent size
    ngf: int = 64  # G width
    ndf: int = 64  # D width
    mlp_hidden: int = 256  # hidden width of the MLP GAN (G: h-2h-4h, D: 2h-h)
    conditional: bool = False  # class-conditional G and D
    spectral_norm: bool = False  # spectral norm on D layers
    d_batchnorm: bool = True  # BatchNorm in D's inner layers; off when spectral_norm
    d_dropout: float = 0.0  # dropout after each activation of D
    sync_bn: bool = False  # under DDP, BatchNorm statistics of the global batch (distgan.ddp.GlobalBatchNorm)


class ModelSpec:
    """What every spec is: a frozen dataclass with at least these fields, JSON in and out (every key checked on
    the way in, errors name it). A family's spec subclasses it (see `GeneratorSpec` for the fields)."""

    KIND = ""
    arch: str
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool

    @classmethod
    def from_dict(cls, spec: dict[str, Any]):
        return _spec_from_dict(cls, spec, cls.KIND)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GeneratorSpec(ModelSpec):
    """G of the mlp and dcgan families: everything that fixes its architecture (what builds, saves, loads,
    exports and evaluates it)."""

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
        return cls(arch=cfg.arch, nz=cfg.nz, ngf=cfg.ngf, mlp_hidden=cfg.mlp_hidden, channels=channels,
                   height=height, width=width, num_classes=num_classes, conditional=cfg.conditional)


@dataclass(frozen=True)
class DiscriminatorSpec(ModelSpec):
    """D of the mlp and dcgan families (saved with every checkpoint as discriminator.json)."""

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
        return cls(arch=cfg.arch, ndf=cfg.ndf, mlp_hidden=cfg.mlp_hidden, channels=channels, height=height,
                   width=width, num_classes=num_classes, conditional=cfg.conditional,
                   batchnorm=cfg.d_batchnorm and not cfg.spectral_norm,  # SN already bounds D; BN would fight it
                   dropout=cfg.d_dropout, spectral_norm=cfg.spectral_norm)


def _spec_from_dict(cls, spec: dict[str, Any], what: str):
    """The spec from its JSON dict, every key and type checked (the family checks the values)."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    kinds = {"str": str, "int": int, "bool": bool, "float": float, "tuple[int, ...]": list}
    for key in spec:
        if key not in types:
            raise ValueError(f"{what} spec has unknown key {key!r}; expected keys: {', '.join(types)}")
    for key, type_name in types.items():
        if key not in spec:
            raise ValueError(f"{what} spec is missing key {key!r}")
        kind, value = kinds[type_name], spec[key]
        # bool is an int subclass; a spec from JSON never mixes them up, a hand-made one might.
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if kind is list:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{what} spec key {key!r} must be {type_name}, got {value!r}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


