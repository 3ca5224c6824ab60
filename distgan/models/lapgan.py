"""LAPGAN (Denton et al. 2015): one small GAN per level of a Laplacian pyramid (`pyramid.py`).

Levels are numbered as in the paper: 0 is the data's resolution, L-1 the coarsest (7 or 8 px).

- The coarsest level is an ordinary GAN: G_{L-1}(z, y) -> a 7x7 image, D_{L-1} judges 7x7 images.
- Each finer level k is a conditional GAN on the up-sampled coarser image l_k = up(I_{k+1}):
  G_k(z_k, l_k, y) -> the band-pass residual h_k, and D_k judges (h_k + l_k, l_k): the image the residual
  makes together with what it was conditioned on. In training l_k comes from the real image's pyramid,
  so the levels do not depend on each other and train in parallel (on different ranks or jobs).
- Sampling chains them coarse to fine: I_{L-1} = G_{L-1}(z), I_k = clamp(l_k + G_k(z_k, l_k), -1, 1).
- z_k is a noise plane (one channel of the level's size, the paper's "4th colour plane"); class
  conditioning (the paper's CC-LAPGAN) adds a learnt per-class plane to G_k's and D_k's input, and a
  conditional BatchNorm to the coarse G. One image is drawn from one concatenated latent
  [z_{L-1}, z_{L-2}, ..., z_0] (coarse first), which is what the export takes as `z`.

The networks are the paper's small ones: an MLP coarse G, three 3x3 convolutions per finer G, and a
two-convolution D with a linear read-out at every level.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from distgan.models.family import Family
from distgan.models.layers import LABEL_LAYERS, _conditional, init_weights
from distgan.models.pyramid import gaussian_pyramid, level_sizes, up
from distgan.models.specs import ModelConfig

ARCH = "lapgan"


@dataclass(frozen=True)
class LapganSpec:
    """Everything that fixes the pyramid's networks (G's and D's: they share the sizes)."""

    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool
    coarse_nz: int  # the coarse level's latent size (model.nz); finer levels take a noise plane of their own size
    ngf: int  # G width at every level (the coarse MLP: 4 * ngf hidden units)
    ndf: int  # D width at every level
    d_dropout: float = 0.0

    def __post_init__(self) -> None:
        for key in ("channels", "height", "width", "coarse_nz", "ngf", "ndf"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"lapgan spec key {key!r} must be an int >= 1, got {getattr(self, key)!r}")
        if self.conditional and self.num_classes < 2:
            raise ValueError(f"a conditional model needs num_classes >= 2, got {self.num_classes}")
        if not 0.0 <= self.d_dropout < 1.0:
            raise ValueError(f"lapgan spec key 'd_dropout' must be in [0, 1), got {self.d_dropout}")
        level_sizes(self.height, self.width)  # raises for sizes that do not halve to <= 8 px

    @property
    def arch(self) -> str:
        return ARCH

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """(height, width) per level, level 0 (finest) first."""
        return level_sizes(self.height, self.width)

    @property
    def levels(self) -> int:
        return len(self.sizes)

    def level_nz(self, level: int) -> int:
        """The latent size of one level: coarse_nz at the coarsest, a noise plane (h x w) below it."""
        if level == self.levels - 1:
            return self.coarse_nz
        h, w = self.sizes[level]
        return h * w

    @property
    def total_nz(self) -> int:
        """The concatenated latent's size: what the export's `z` and every sampler draw."""
        return sum(self.level_nz(k) for k in range(self.levels))

    def latent_slices(self) -> dict[int, slice]:
        """Where each level's latent sits in the concatenated z (coarse first)."""
        slices, start = {}, 0
        for level in reversed(range(self.levels)):
            slices[level] = slice(start, start + self.level_nz(level))
            start += self.level_nz(level)
        return slices

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON, with `nz` (the concatenated latent's size, derived) for clients that draw z."""
        return {"arch": ARCH, "nz": self.total_nz, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> LapganSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(spec) - fields - {"arch", "nz"}
        if spec.get("arch", ARCH) != ARCH or unknown:
            raise ValueError(f"not a lapgan spec: arch {spec.get('arch')!r}, unknown keys {sorted(unknown)}")
        missing = fields - set(spec) - {"d_dropout"}
        if missing:
            raise ValueError(f"lapgan spec is missing key(s) {', '.join(sorted(missing))}")
        made = cls(**{k: v for k, v in spec.items() if k not in ("arch", "nz")})
        if spec.get("nz", made.total_nz) != made.total_nz:
            raise ValueError(f"lapgan spec key 'nz' is {spec['nz']} but its levels take {made.total_nz}")
        return made


class LabelPlane(nn.Module):
    """Class ids [B] -> a learnt per-class plane [B, 1, H, W] (CC-LAPGAN's conditioning channel)."""

    def __init__(self, num_classes: int, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width
        self.embed = nn.Embedding(num_classes, height * width)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embed(labels).reshape(-1, 1, self.height, self.width)


def _check_labels(conditional: bool, labels: torch.Tensor | None, what: str) -> None:
    # Resolved at trace time: free in ONNX.
    if conditional and labels is None:
        raise ValueError(f"this {what} is conditional: pass labels (int64 class ids, shape [B])")
    if not conditional and labels is not None:
        raise ValueError(f"labels given to an unconditional {what}")


class CoarseGenerator(nn.Module):
    """z [B, nz] (+ labels) -> the coarsest image [B, C, h, w] in [-1, 1]: an MLP, as in the paper."""

    def __init__(self, spec: LapganSpec):
        super().__init__()
        h, w = spec.sizes[-1]
        hidden = 4 * spec.ngf
        net = nn.Sequential(
            nn.Linear(spec.coarse_nz, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, spec.channels * h * w), nn.Tanh(), nn.Unflatten(1, (spec.channels, h, w)),
        )
        self.conditional = spec.conditional
        self.net = _conditional(net, spec.num_classes) if spec.conditional else net

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(self.conditional, labels, "generator")
        x = z
        for layer in self.net:
            x = layer(x, labels) if isinstance(layer, LABEL_LAYERS) else layer(x)
        return x


class ResidualGenerator(nn.Module):
    """(z_k [B, h*w], l_k [B, C, h, w], labels) -> the band-pass residual h_k [B, C, h, w]."""

    def __init__(self, spec: LapganSpec, level: int):
        super().__init__()
        h, w = spec.sizes[level]
        self.height, self.width = h, w
        self.labels = LabelPlane(spec.num_classes, h, w) if spec.conditional else None
        in_ch = spec.channels + 1 + (1 if spec.conditional else 0)
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, spec.ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(spec.ngf), nn.ReLU(),
            nn.Conv2d(spec.ngf, spec.ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(spec.ngf), nn.ReLU(),
            nn.Conv2d(spec.ngf, spec.channels, 3, 1, 1),  # linear: a residual is signed and unbounded
        )

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(self.labels is not None, labels, "generator")
        if condition is None:
            raise ValueError("a finer LAPGAN level needs its up-sampled coarser image as `condition`")
        planes = [condition, z.reshape(-1, 1, self.height, self.width)]
        if self.labels is not None:
            planes.append(self.labels(labels))
        return self.net(torch.cat(planes, dim=1))


class LevelDiscriminator(nn.Module):
    """(image [B, C, h, w], condition l_k or None, labels) -> one float32 logit per image.

    At a finer level the image is h_k + l_k (the paper adds the residual to its low-pass image before the
    first convolution) and l_k is given beside it; at the coarsest the image alone."""

    def __init__(self, spec: LapganSpec, level: int):
        super().__init__()
        h, w = spec.sizes[level]
        coarsest = level == spec.levels - 1
        self.labels = LabelPlane(spec.num_classes, h, w) if spec.conditional else None
        in_ch = spec.channels * (1 if coarsest else 2) + (1 if spec.conditional else 0)
        dropout = [nn.Dropout(spec.d_dropout)] if spec.d_dropout > 0 else []
        out_h, out_w = (h + 2 - 4) // 2 + 1, (w + 2 - 4) // 2 + 1  # after the stride-2 convolution
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, spec.ndf, 3, 1, 1), nn.LeakyReLU(0.2), *dropout,
            nn.Conv2d(spec.ndf, 2 * spec.ndf, 4, 2, 1), nn.LeakyReLU(0.2), *dropout,
            nn.Flatten(), nn.Linear(2 * spec.ndf * out_h * out_w, 1),
        )

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(self.labels is not None, labels, "discriminator")
        planes = [image] if condition is None else [image, condition]
        if self.labels is not None:
            planes.append(self.labels(labels))
        return self.net(torch.cat(planes, dim=1)).flatten().float()


def build_level_generator(spec: LapganSpec, level: int) -> nn.Module:
    """G of one level, DCGAN-initialised."""
    net = CoarseGenerator(spec) if level == spec.levels - 1 else ResidualGenerator(spec, level)
    net.apply(init_weights)
    return net


def build_level_discriminator(spec: LapganSpec, level: int) -> LevelDiscriminator:
    """D of one level, DCGAN-initialised."""
    net = LevelDiscriminator(spec, level)
    net.apply(init_weights)
    return net


class LaplacianGenerator(nn.Module):
    """The whole pyramid as one generator: z [B, total_nz] (+ labels [B]) -> images [B, C, H, W] in [-1, 1].

    `generators[k]` is level k's G (0 finest); sampling runs them coarse to fine."""

    def __init__(self, spec: LapganSpec):
        super().__init__()
        self.spec = spec
        self.conditional = spec.conditional
        self.generators = nn.ModuleList(build_level_generator(spec, k) for k in range(spec.levels))

    def stages(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every level's image of the chain, coarsest first; the last is the output."""
        _check_labels(self.conditional, labels, "generator")
        slices = self.spec.latent_slices()
        coarsest = self.spec.levels - 1
        images = [self.generators[coarsest](z[:, slices[coarsest]], None, labels)]
        for level in reversed(range(coarsest)):
            condition = up(images[-1])
            residual = self.generators[level](z[:, slices[level]], condition, labels)
            images.append(torch.clamp(condition + residual, -1.0, 1.0))
        return images

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.stages(z, labels)[-1]


class PyramidStages(nn.Module):
    """What the export traces: (images, stage_0, ..., stage_{L-1}), the stages coarse to fine (each at its
    level's size; the last is the images), so a client can show how one sample was built. `images` stays the
    first output: every client that reads it alone works unchanged."""

    def __init__(self, generator: LaplacianGenerator):
        super().__init__()
        self.generator = generator
        self.train(generator.training)  # an exporter restores the wrapper's mode onto G's BatchNorms afterwards

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        stages = self.generator.stages(z, labels)
        return (stages[-1], *stages)


def lapgan_from_spec(spec: LapganSpec | dict[str, Any]) -> LaplacianGenerator:
    """The pyramid generator `spec` describes, initialised (ready for `load_state_dict`)."""
    return LaplacianGenerator(spec if isinstance(spec, LapganSpec) else LapganSpec.from_dict(spec))


def level_real(real: torch.Tensor, level: int, levels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What level `level` learns from a real batch in [-1, 1]: (target, condition).

    The coarsest level: (I_{L-1}, None). A finer level k: (h_k, l_k) with l_k = up(I_{k+1}) and
    h_k = I_k - l_k, the band G_k must produce given l_k."""
    gauss = gaussian_pyramid(real, min(level + 2, levels))
    if level == levels - 1:
        return gauss[level], None
    condition = up(gauss[level + 1])
    return gauss[level] - condition, condition


def discriminator_input(target: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
    """What D sees of a (real or generated) target: h_k + l_k at a finer level, the image at the coarsest."""
    return target if condition is None else target + condition



class LapganFamily(Family):
    """`model.arch: lapgan`: G is the whole pyramid (what export, sampling and the metrics use); training is
    per level, by the family's own trainer (`training/level_run.py`), since there is one D per level."""

    name = ARCH
    config = ModelConfig  # model.nz (the coarse latent), ngf, ndf, conditional, d_dropout
    generator_spec = LapganSpec
    discriminator_spec = LapganSpec

    def check(self, cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> None:
        self.make_generator_spec(cfg, shape, num_classes)

    def make_generator_spec(self, cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> LapganSpec:
        return LapganSpec(channels=shape[0], height=shape[1], width=shape[2],
                          num_classes=num_classes if cfg.conditional else 0, conditional=cfg.conditional,
                          coarse_nz=cfg.nz, ngf=cfg.ngf, ndf=cfg.ndf, d_dropout=cfg.d_dropout)

    make_discriminator_spec = make_generator_spec

    def build_generator(self, spec: LapganSpec) -> LaplacianGenerator:
        return lapgan_from_spec(spec)

    def build_discriminator(self, spec: LapganSpec) -> nn.Module:
        raise ValueError("model.arch lapgan has one discriminator per level (build_level_discriminator); "
                         "it trains with its own trainer (distgan-train runs it)")

    def latent_size(self, spec: LapganSpec) -> int:
        return spec.total_nz

    def d_batchnorm(self, cfg: ModelConfig) -> bool:
        return False  # no level's D has BatchNorm

    def stage_outputs(self, spec: LapganSpec) -> tuple[str, ...]:
        return tuple(f"stage_{i}" for i in range(spec.levels))  # coarse to fine: stage_0 is the coarsest

    def export_module(self, generator: LaplacianGenerator) -> nn.Module:
        return PyramidStages(generator)

    def export_metadata(self, spec: LapganSpec) -> dict[str, str]:
        return {"lapgan_levels": json.dumps([list(size) for size in spec.sizes]),  # finest first
                "stages": json.dumps(list(self.stage_outputs(spec)))}  # the graph's stage outputs, coarse first

    def own_trainer(self):
        from distgan.training.level_run import train_lapgan  # training code: imported only to train

        return train_lapgan


FAMILY = LapganFamily()
