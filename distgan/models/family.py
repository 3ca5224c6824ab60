"""The model-family interface: everything a network family declares, in one place, and the registry.

A family (one module under distgan/models/: `mlp`, `dcgan`, `resnet`, ...) declares:
- its config keys: a dataclass subclass of `ModelConfig` (the `model:` section when `model.arch` names
  the family), checked by `check` at start with the key named;
- its defaults for other sections (loss kind, lrs, betas): `defaults`, merged under the user's config
  and so written into the run's config.yaml;
- its G and D specs (JSON in generator.json / discriminator.json) and how G and D are built from them;
- what G takes: named inputs (`inputs`), how the trainer, the sample grids and the metrics fill them
  (`generator_inputs`: from seeded latents, labels and, for image-conditioned families, real images), and
  what the exporter traces (`export_module`, the same named inputs with their dynamic axes, `export_metadata`)
  so that the torch-free runtime knows what to feed;
- how the step prepares a real batch on the device (`prepare_batch`);
- its extra loss terms and state (`loss_terms`: an `nn.Module` whose buffers the checkpoint saves);
- for a style-based G, its intermediate latent space (`w_space`: mapping and synthesis apart), which
  perceptual path length walks in.

The training step, the checkpoint, export, the sampler, serve and the metrics ask the family; none of them
branches on a family's name. Adding a family is one module and one line in `FAMILY_MODULES`; a family
outside distgan (a plugin, a test's toy) is named by `module:attribute` in the environment variable
`DISTGAN_FAMILIES` so that every process of a launch finds it.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from distgan.models.specs import ModelConfig, ModelSpec

# The families distgan ships: module paths, each defining FAMILY (imported on first use).
FAMILY_MODULES = ("distgan.models.mlp", "distgan.models.dcgan", "distgan.models.resnet", "distgan.models.srgan",
                   "distgan.models.stylegan2", "distgan.models.lapgan")
PLUGIN_ENV = "DISTGAN_FAMILIES"  # comma list of module:attribute, each a Family instance


@dataclass(frozen=True)
class InputSpec:
    """One named input of G: the trainer, the exporter and the torch-free runtime all read this.

    `shape` excludes the batch axis (always dynamic); `dynamic` names the other axes that may vary
    (e.g. ("", "height", "width") for an image of any size; "" keeps an axis fixed); `shape` then holds
    the sizes the exporter traces and checks parity with. `draw` says how a client fills it:
    "normal" (N(0, 1) latents), "class" (int64 ids 0..num_classes-1), "image" (float in [-1, 1]).
    `default`: for an input other than z and labels, the value the torch-free runtime feeds (every element)
    when its caller does not choose one (e.g. a truncation psi of 1).
    """

    name: str
    dtype: str  # "float32" | "int64"
    shape: tuple[int, ...]
    draw: str
    dynamic: tuple[str, ...] = ()
    default: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "draw": self.draw,
                "dynamic": list(self.dynamic), "default": self.default}


class LossTerms(nn.Module):
    """A family's extra loss terms and the state they carry (buffers: saved and resumed with the checkpoint).

    Both hooks run inside the step (autocast on); they return a scalar to add to the loss, or None.
    Keep every update in place: a CUDA graph of the step replays the tensors it recorded.
    """

    def d_loss(self, step: int, real: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        return None

    def g_loss(self, step: int, inputs: dict[str, torch.Tensor], fake: torch.Tensor,
               real: torch.Tensor) -> torch.Tensor | None:
        """`real`: the real batch of the same D update (an image-conditioned G's target, e.g. SRGAN's HR)."""
        return None

    def adversarial_weight(self, step: int | torch.Tensor) -> float | torch.Tensor | None:
        """What the GAN's own G loss is multiplied by (SRGAN: 1e-3, and 0 in its warm-up); None: 1."""
        return None

    def attach(self, generator: nn.Module) -> None:
        """Called once with G's raw module before training, for terms that run or configure G themselves
        (StyleGAN2's path length runs G again; its style-mixing probability is a training setting of G)."""


@dataclass(frozen=True)
class WSpace:
    """A G's intermediate latent space W, reached apart from its input z: what perceptual path length walks in.

    `mapping(z, labels)` -> w [B, w_dim]; `synthesis(w)` -> images [B, C, H, W] in about [-1, 1], every layer
    styled by the same w, no truncation; `resample_noise(generator)` redraws whatever fixed noise the synthesis
    adds (StyleGAN2's per-layer constants), so that a metric averages over noise as NVlabs' does.
    """

    mapping: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    synthesis: Callable[[torch.Tensor], torch.Tensor]
    resample_noise: Callable[[torch.Generator], None]


class Family:
    """The base every family extends; the defaults describe a "z (+ labels) -> image" GAN."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()  # other `model.arch` names that build this family (older names)
    config: ClassVar[type[ModelConfig]] = ModelConfig
    generator_spec: ClassVar[type[ModelSpec]]
    discriminator_spec: ClassVar[type[ModelSpec]]
    defaults: ClassVar[dict[str, Any]] = {}  # "section.key": value, under the user's config

    @property
    def arches(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    # --- config and specs ---------------------------------------------------------------

    def check(self, cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> None:
        """Refuse what this family cannot build, naming the key and what it can; ValueError."""
        check_common(cfg, shape, num_classes)

    def check_spec(self, spec: ModelSpec) -> None:
        """A spec read from JSON, checked as the config it came from would be (the keys both have)."""
        names = {f.name for f in dataclasses.fields(self.config)}
        values = {k: v for k, v in spec.to_dict().items() if k in names}
        self.check(self.config(**values), (spec.channels, spec.height, spec.width), spec.num_classes)

    def make_generator_spec(self, cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> ModelSpec:
        raise NotImplementedError

    def make_discriminator_spec(self, cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> ModelSpec:
        raise NotImplementedError

    # --- networks -----------------------------------------------------------------------

    def build_generator(self, spec: ModelSpec) -> nn.Module:
        """G, initialised, with `.spec` set: `G(**generator_inputs(...))` -> images [B, C, H, W] in [-1, 1]."""
        raise NotImplementedError

    def build_discriminator(self, spec: ModelSpec) -> nn.Module:
        """D, initialised, with `.spec` set: `D(images, labels)` -> one float32 score per image."""
        raise NotImplementedError

    # --- what G takes -------------------------------------------------------------------

    def latent_size(self, spec: ModelSpec) -> int:
        """Length of the seeded latent every image is drawn from (0: G takes none)."""
        return spec.nz

    def inputs(self, spec: ModelSpec) -> tuple[InputSpec, ...]:
        z = InputSpec("z", "float32", (self.latent_size(spec),), "normal")
        return (z, InputSpec("labels", "int64", (), "class")) if spec.conditional else (z,)

    def generator_inputs(self, spec: ModelSpec, z: torch.Tensor, labels: torch.Tensor | None,
                         real: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """G's named inputs for latents `z`, class ids `labels` (None: unconditional) and, for families that
        take an image, the real images (in [-1, 1]) of the same batch."""
        return {"z": z, "labels": labels} if spec.conditional else {"z": z}

    def prepare_batch(self, spec: ModelSpec, real: torch.Tensor) -> torch.Tensor:
        """A normalised real batch, on the device, as D should see it (e.g. a crop); the identity here."""
        return real

    def d_batchnorm(self, cfg: ModelConfig) -> bool:
        """Whether D has BatchNorm (which a per-sample penalty such as wgan-gp's or R1 cannot work with)."""
        return cfg.d_batchnorm and not cfg.spectral_norm

    def loss_terms(self, cfg: Any, g_spec: ModelSpec, d_spec: ModelSpec) -> LossTerms | None:
        """Extra loss terms with their checkpointed state (the full Config is given); None: none."""
        return None

    def own_trainer(self) -> Callable[[Any], str] | None:
        """The trainer of a family that is not one G/D pair (LAPGAN: one GAN per pyramid level): a function of
        the Config, run by distgan-train instead of the loop; None: the loop (`training/loop.py`)."""
        return None

    def w_space(self, generator: nn.Module) -> WSpace | None:
        """`generator`'s W (its mapping and synthesis, eval mode), or None: z feeds the image network directly."""
        return None

    # --- export -------------------------------------------------------------------------

    def export_module(self, generator: nn.Module) -> nn.Module:
        """What the exporter traces: the same function as `generator` (parity is checked), fit for inference."""
        return generator

    def sample_images(self, generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None,
                      real: torch.Tensor | None) -> torch.Tensor:
        """The training-time sample grid's images (8 a row): G's images here; an image-conditioned family may show
        its inputs and targets beside them. `real`: fixed real images, for families whose G takes an image."""
        return generator(**self.generator_inputs(generator.spec, z, labels, real))

    def stage_outputs(self, spec: ModelSpec) -> tuple[str, ...]:
        """Names of the intermediate images `export_module` returns after the output (a pyramid's stages, coarse
        to fine), which the graph gets as extra outputs after `images`; () for a G with one output."""
        return ()

    def export_metadata(self, spec: ModelSpec) -> dict[str, str]:
        """Extra `distgan.*` metadata for clients (without the prefix); the inputs are always written."""
        return {}


def check_common(cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> None:
    """The checks every family shares: positive sizes, classes for a conditional model, D's dropout."""
    for name in ("nz", "ngf", "ndf", "mlp_hidden"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"model.{name} must be >= 1, got {getattr(cfg, name)}")
    channels, height, width = shape
    if min(channels, height, width) < 1:
        raise ValueError(f"image shape must be positive, got {channels}x{height}x{width}")
    if cfg.conditional and num_classes < 2:
        raise ValueError(f"a conditional model needs num_classes >= 2, got {num_classes}")
    if not 0.0 <= cfg.d_dropout < 1.0:
        raise ValueError(f"model.d_dropout must be in [0, 1), got {cfg.d_dropout}")


# --- the registry ---------------------------------------------------------------------------


def _load(path: str) -> Family:
    module, _, attribute = path.partition(":")
    family = getattr(importlib.import_module(module), attribute or "FAMILY")
    if not isinstance(family, Family) or not family.name:
        raise ValueError(f"{PLUGIN_ENV}: {path} is not a named distgan Family instance")
    return family


def families() -> dict[str, Family]:
    """Every known `model.arch` name (names and aliases) -> its family: distgan's, then the plugins'."""
    plugins = [p.strip() for p in os.environ.get(PLUGIN_ENV, "").split(",") if p.strip()]
    found: dict[str, Family] = {}
    for family in [_load(m) for m in FAMILY_MODULES] + [_load(p) for p in plugins]:
        for arch in family.arches:
            if arch in found and found[arch] is not family:
                raise ValueError(f"model.arch {arch!r} is claimed by two families")
            found[arch] = family
    return found


def arch_names() -> tuple[str, ...]:
    return tuple(families())


def get_family(arch: str) -> Family:
    """The family of a `model.arch` name, or a ValueError listing the valid ones."""
    known = families()
    if arch not in known:
        raise ValueError(f"unknown model.arch {arch!r}; valid: {', '.join(known)}")
    return known[arch]


# --- building and loading, through the family ------------------------------------------------


def build_generator(cfg: ModelConfig, channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    family = get_family(cfg.arch)
    return family.build_generator(family.make_generator_spec(cfg, (channels, height, width), num_classes))


def build_discriminator(cfg: ModelConfig, channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    family = get_family(cfg.arch)
    return family.build_discriminator(family.make_discriminator_spec(cfg, (channels, height, width), num_classes))


def _spec(kind: str, spec: ModelSpec | dict[str, Any]) -> tuple[Family, ModelSpec]:
    if isinstance(spec, ModelSpec):
        return get_family(spec.arch), spec
    if not isinstance(spec, dict) or not isinstance(spec.get("arch"), str):
        raise ValueError(f"{kind} spec has no 'arch' string")
    family = get_family(spec["arch"])
    spec_type = family.generator_spec if kind == "generator" else family.discriminator_spec
    built = spec_type.from_dict(spec)
    family.check_spec(built)
    return family, built


def generator_from_spec(spec: ModelSpec | dict[str, Any]) -> nn.Module:
    """The architecture `spec` describes (a spec or its JSON dict), initialised (ready for `load_state_dict`)."""
    family, spec = _spec("generator", spec)
    return family.build_generator(spec)


def discriminator_from_spec(spec: ModelSpec | dict[str, Any]) -> nn.Module:
    family, spec = _spec("discriminator", spec)
    return family.build_discriminator(spec)


def family_of(module: nn.Module) -> Family:
    """The family of a built G or D (through its spec)."""
    return get_family(module.spec.arch)


def generate(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None,
             real: torch.Tensor | None = None) -> torch.Tensor:
    """Images of a built G for latents `z` and class ids `labels`, through its family's named inputs."""
    return generator(**family_of(generator).generator_inputs(generator.spec, z, labels, real))


def latent_size(generator: nn.Module) -> int:
    return family_of(generator).latent_size(generator.spec)


def config_type(arch: str) -> type[ModelConfig]:
    return get_family(arch).config


def family_keys(family: Family) -> tuple[str, ...]:
    """The `model.*` keys a family adds to the shared ones."""
    shared = {f.name for f in dataclasses.fields(ModelConfig)}
    return tuple(f.name for f in dataclasses.fields(family.config) if f.name not in shared)
