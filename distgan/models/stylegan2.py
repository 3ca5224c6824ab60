"""StyleGAN2 (Karras et al. 2020, "config F" minus the custom CUDA ops), after NVlabs' stylegan2-ada-pytorch.

G = mapping (z -> w: normalised z [+ normalised label embedding], `mapping_layers` equalised FC
layers at lr x `mapping_lr`) + synthesis (a learned 4x4 constant, two modulated 3x3 convolutions
per resolution with per-layer noise of learned strength, FIR-filtered 2x up-sampling, and an
output-skip ("skip") RGB image summed over resolutions). D is residual with a minibatch-stddev
epilogue; a conditional D projects its output onto a label embedding (stylegan2-ada's cmap).

Styles: G's synthesis reads `num_ws` = 2 x (number of resolutions) w vectors, one per modulated
layer (the ToRGB of one resolution shares its w with the next one's first convolution, as in
stylegan2-ada). Style mixing at `mix_layer` = m takes ws[m:] from z2; m = 0 is z2's image,
m >= num_ws is z's. Truncation moves every w toward `w_avg` (tracked during training as an
exponential average of the mapping's output): w_avg + psi (w - w_avg).

Noise: in training mode each layer adds fresh N(0, 1) noise times its learned strength; in eval
mode (sampling, evaluation, export) it adds its stored constant noise map instead (the
`noise_const` buffers, drawn once at initialisation and saved with the weights), so an image is a
deterministic function of (z, label, psi, z2, mix_layer) in torch and in ONNX alike.

Image sizes: square, 8 to 256 pixels. The networks run at the next power of two (at least 8);
a smaller image (28 -> 32) is cropped from the centre of G's output and zero-padded back to the
network size at D's input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from distgan.losses import path_length_penalty
from distgan.models.family import Family, InputSpec, LossTerms, WSpace, check_common
from distgan.models.specs import ModelConfig, ModelSpec
from distgan.models.stylegan2_layers import (EqualConv2d, EqualLinear, MinibatchStd, fir_kernel, lrelu,
                                             modulated_conv2d, normalize_2nd_moment, upsample2d)

ARCH = "stylegan2"
W_AVG_BETA = 0.995  # w_avg <- lerp(batch mean of w, w_avg, beta): stylegan2-ada's decay
PL_DECAY = 0.01  # the path-length running mean's step toward each batch's mean (stylegan2-ada)
PL_BATCH_SHRINK = 2  # the path-length penalty runs on half the batch (stylegan2-ada)
MIN_SIZE, MAX_SIZE = 8, 256


@dataclass(frozen=True)
class StyleGAN2Spec(ModelSpec):
    """Everything that fixes StyleGAN2's G and D: what builds, saves, loads and exports them."""

    KIND = "generator"
    arch: str  # "stylegan2" (the key other specs dispatch on)
    nz: int  # z size
    w_dim: int  # w size (and the mapping's width)
    mapping_layers: int
    mapping_lr: float  # the mapping network's learning-rate multiplier (0.01 in StyleGAN2)
    channel_base: int  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int
    mbstd_group: int  # D's minibatch-stddev group size
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool

    def __post_init__(self) -> None:
        if self.arch != ARCH:
            raise ValueError(f"a StyleGAN2 spec has arch {ARCH!r}, got {self.arch!r}")
        for name in ("nz", "w_dim", "mapping_layers", "channel_base", "channel_max", "mbstd_group", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.mapping_lr <= 1.0:
            raise ValueError(f"model.mapping_lr must be in (0, 1], got {self.mapping_lr}")
        if self.height != self.width or not MIN_SIZE <= self.height <= MAX_SIZE:
            raise ValueError(f"stylegan2 needs square images of {MIN_SIZE}-{MAX_SIZE} px (28 is padded to 32), "
                             f"got {self.height}x{self.width}")
        if self.conditional and self.num_classes < 2:
            raise ValueError(f"a conditional model needs num_classes >= 2, got {self.num_classes}")
        if min(self.channel_base // r for r in (4, self.resolution)) < 1:
            raise ValueError(f"model.channel_base {self.channel_base} leaves no channels at "
                             f"{self.resolution} px; use at least {self.resolution}")

    @property
    def resolution(self) -> int:
        """The networks' own size: a power of two, at least the image's."""
        return max(MIN_SIZE, 1 << (self.height - 1).bit_length())

    @property
    def block_resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        return 2 * len(self.block_resolutions)

    def width_at(self, resolution: int) -> int:
        return min(self.channel_base // resolution, self.channel_max)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """`value` averaged over the ranks of a distributed run (itself in one process): running statistics such as
    w_avg then move by the global batch and stay bit-identical on every rank (the weight check before a
    snapshot compares them; the checkpoint stores rank 0's)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


# --- generator ----------------------------------------------------------------------


class MappingNetwork(nn.Module):
    """z (+ label) -> w; tracks w_avg, the centre that truncation pulls toward."""

    def __init__(self, spec: StyleGAN2Spec):
        super().__init__()
        self.embed = nn.Embedding(spec.num_classes, spec.w_dim) if spec.conditional else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight)  # N(0, 1): an equalised layer's storage (it is normalised after)
        widths = [spec.nz + (spec.w_dim if spec.conditional else 0)] + [spec.w_dim] * spec.mapping_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_multiplier=spec.mapping_lr, activation=True)
                                      for a, b in zip(widths[:-1], widths[1:])])
        self.register_buffer("w_avg", torch.zeros(spec.w_dim))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None, track: bool = False) -> torch.Tensor:
        x = normalize_2nd_moment(z.to(torch.promote_types(z.dtype, torch.float32)))
        if self.embed is not None:
            x = torch.cat([x, normalize_2nd_moment(self.embed(labels))], dim=1)
        w = self.layers(x)
        if track:
            with torch.no_grad():
                batch_mean = w.detach().float().mean(dim=0)  # fp32 whatever autocast ran the layers in
                self.w_avg.copy_(mean_over_ranks(batch_mean).lerp(self.w_avg, W_AVG_BETA))
        return w


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + noise x learned strength + bias + leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1: plain convolutions
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))  # demodulation sets its scale
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up = up
        if up:
            self.register_buffer("fir", fir_kernel(out_channels, gain=4.0), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, fir=self.fir if self.up else None)
        if self.training:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const.to(x.dtype)
        return lrelu(x + noise * self.noise_strength + self.bias[:, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation: this resolution's contribution to the output image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, demodulate=False) + self.bias[:, None, None]


class SynthesisBlock(nn.Module):
    """One resolution: (the constant | 2x up conv), conv, ToRGB added to the up-sampled image so far."""

    def __init__(self, spec: StyleGAN2Spec, resolution: int):
        super().__init__()
        out_channels = spec.width_at(resolution)
        self.first = resolution == 4
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(spec.width_at(resolution // 2), out_channels, spec.w_dim, resolution, up=True)
            self.register_buffer("fir", fir_kernel(spec.channels, gain=4.0), persistent=False)
        self.conv1 = SynthesisLayer(out_channels, out_channels, spec.w_dim, resolution, up=False)
        self.torgb = ToRGB(out_channels, spec.channels, spec.w_dim)
        self.num_conv = 1 if self.first else 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None,
                ws: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """ws: this block's num_conv + 1 styles (the last one is shared with the next block)."""
        if self.first:
            x = self.const[None].expand(ws[0].shape[0], -1, -1, -1)
            x = self.conv1(x, ws[0])
        else:
            x = self.conv1(self.conv0(x, ws[0]), ws[1])
        y = self.torgb(x, ws[self.num_conv])
        return x, y if img is None else upsample2d(img, self.fir) + y


class StyleGAN2Generator(nn.Module):
    """z [B, nz] (+ labels [B] int64) -> images [B, C, H, W] (about [-1, 1], not clamped).

    Optional inputs: psi [B] (truncation toward w_avg), z2 [B, nz] with mix_layer [B] int64 (style mixing).
    In training mode, w_avg is tracked and, with probability `style_mixing`, a batch takes its styles
    from a second random z after a random layer (the style-mixing regulariser).
    """

    def __init__(self, spec: StyleGAN2Spec, style_mixing: float = 0.0):
        super().__init__()
        if not 0.0 <= style_mixing <= 1.0:
            raise ValueError(f"loss.style_mixing must be in [0, 1], got {style_mixing}")
        self.spec, self.conditional, self.style_mixing = spec, spec.conditional, style_mixing
        self.num_ws = spec.num_ws
        self.mapping = MappingNetwork(spec)
        self.blocks = nn.ModuleList([SynthesisBlock(spec, r) for r in spec.block_resolutions])
        self.register_buffer("layer_index", torch.arange(self.num_ws), persistent=False)

    def ws(self, z: torch.Tensor, labels: torch.Tensor | None = None, psi: torch.Tensor | None = None,
           z2: torch.Tensor | None = None, mix_layer: torch.Tensor | None = None) -> torch.Tensor:
        """The styles [B, num_ws, w_dim] for these inputs (see the class doc)."""
        if self.conditional != (labels is not None):
            raise ValueError("this generator is conditional: pass labels (int64 class ids, shape [B])"
                             if self.conditional else "labels given to an unconditional generator")
        if (z2 is None) != (mix_layer is None):
            raise ValueError("style mixing needs both z2 and mix_layer")
        w = self.mapping(z, labels, track=self.training)
        ws = w[:, None].expand(-1, self.num_ws, -1)
        if z2 is not None:
            ws = self._mix(ws, self.mapping(z2, labels), mix_layer)
        elif self.training and self.style_mixing > 0:
            ws = self._mixing_regulariser(ws, z, labels)
        if psi is not None:
            ws = self.mapping.w_avg.to(ws.dtype).lerp(ws, psi.to(ws.dtype)[:, None, None])
        return ws

    def _mix(self, ws: torch.Tensor, w2: torch.Tensor, mix_layer: torch.Tensor) -> torch.Tensor:
        """Layers >= mix_layer (per image) take w2."""
        take = self.layer_index[None, :] >= mix_layer.reshape(-1, 1)  # [B, num_ws]
        return torch.where(take[:, :, None], w2[:, None], ws)

    def _mixing_regulariser(self, ws: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """With probability style_mixing, one random cutoff in [1, num_ws) for the batch (stylegan2-ada), drawn
        on the device."""
        cutoff = torch.randint(1, self.num_ws, (), device=z.device)
        mixing = torch.rand((), device=z.device) < self.style_mixing
        cutoff = torch.where(mixing, cutoff, torch.full_like(cutoff, self.num_ws))
        return self._mix(ws, self.mapping(torch.randn_like(z), labels), cutoff.expand(z.shape[0]))

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        styles, x, img, first = ws.unbind(dim=1), None, None, 0
        for block in self.blocks:
            x, img = block(x, img, list(styles[first:first + block.num_conv + 1]))
            first += block.num_conv
        top = (self.spec.resolution - self.spec.height) // 2
        if top:
            img = img[:, :, top:top + self.spec.height, top:top + self.spec.width]
        return img

    def forward(self, z: torch.Tensor, psi: torch.Tensor | None = None, z2: torch.Tensor | None = None,
                mix_layer: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_ws: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The arguments in the order of the family's inputs (so the export traces G itself); `return_ws`: also the
        styles the image was made from (the path-length regulariser's input)."""
        ws = self.ws(z, labels, psi, z2, mix_layer)
        if return_ws:
            ws = ws.detach().requires_grad_(True) if not ws.requires_grad else ws
        img = self.synthesis(ws)
        return (img, ws) if return_ws else img


# --- discriminator ------------------------------------------------------------------


class DiscriminatorBlock(nn.Module):
    """Residual: (skip 1x1 down + conv 3x3, conv 3x3 down) / sqrt(2)."""

    def __init__(self, spec: StyleGAN2Spec, resolution: int):
        super().__init__()
        tmp, out = spec.width_at(resolution), spec.width_at(resolution // 2)
        self.fromrgb = EqualConv2d(spec.channels, tmp, 1) if resolution == spec.resolution else None
        self.conv0 = EqualConv2d(tmp, tmp, 3)
        self.conv1 = EqualConv2d(tmp, out, 3, down=True)
        self.skip = EqualConv2d(tmp, out, 1, bias=False, activation=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


class StyleGAN2Discriminator(nn.Module):
    """images [B, C, H, W] (+ labels [B]) -> logits [B] (float32). B must be a multiple of the mbstd group
    (or smaller than it)."""

    def __init__(self, spec: StyleGAN2Spec):
        super().__init__()
        self.spec = spec
        self.blocks = nn.Sequential(*[DiscriminatorBlock(spec, r) for r in reversed(spec.block_resolutions[1:])])
        width = spec.width_at(4)
        self.mbstd = MinibatchStd(spec.mbstd_group)
        self.conv = EqualConv2d(width + 1, width, 3)
        self.fc = EqualLinear(width * 16, width, activation=True)
        self.out = EqualLinear(width, width if spec.conditional else 1)
        self.cmap = nn.Embedding(spec.num_classes, width) if spec.conditional else None
        if self.cmap is not None:
            nn.init.normal_(self.cmap.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if (self.cmap is not None) != (labels is not None):
            raise ValueError("this discriminator is conditional: pass labels (int64 class ids, shape [B])"
                             if self.cmap is not None else "labels given to an unconditional discriminator")
        pad = (self.spec.resolution - self.spec.height) // 2
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
        h = self.conv(self.mbstd(self.blocks(x)))
        out = self.out(self.fc(h.flatten(1)))
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # float32 (or wider) under autocast
        if self.cmap is None:
            return out.flatten()
        return (out * self.cmap(labels).to(out.dtype)).sum(dim=1) / math.sqrt(out.shape[1])


class ConditionalStyleGAN2Generator(StyleGAN2Generator):
    """The conditional G: labels second, as the family declares its inputs (z, labels, psi, z2, mix_layer)."""

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, psi: torch.Tensor | None = None,
                z2: torch.Tensor | None = None, mix_layer: torch.Tensor | None = None,
                return_ws: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return super().forward(z, psi, z2, mix_layer, labels=labels, return_ws=return_ws)


def build_stylegan2_generator(spec: StyleGAN2Spec, style_mixing: float = 0.0) -> StyleGAN2Generator:
    """G for `spec`: its forward takes the family's inputs in their declared order, labels second when conditional."""
    return (ConditionalStyleGAN2Generator if spec.conditional else StyleGAN2Generator)(spec, style_mixing)


# --- the family (model.arch: stylegan2) -----------------------------------------------------


@dataclass
class StyleGAN2Config(ModelConfig):
    """The `model:` keys of `model.arch: stylegan2`, besides the shared nz (z size) and conditional."""

    w_dim: int = 512  # w size, and the mapping network's width
    mapping_layers: int = 8  # FC layers of the mapping network
    mapping_lr: float = 0.01  # the mapping network's learning-rate multiplier
    channel_base: int = 16384  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    mbstd_group: int = 4  # D's minibatch-stddev group size (data.batch_size must be a multiple)


class StyleGAN2DiscriminatorSpec(StyleGAN2Spec):
    """The same fields for D (saved as discriminator.json)."""

    KIND = "discriminator"


class PathLengthTerms(LossTerms):
    """Lazy path-length regularisation of G (Karras et al. 2020): on G steps where step % loss.pl_every == 0,
    pl_weight x pl_every x E[(|J_w^T y| - a)^2] on half a batch drawn through G again; `pl_mean` (a) is the
    running mean of the path lengths over every rank, a buffer the checkpoint saves. The counter is the step,
    so a resume at any step continues the same schedule."""

    def __init__(self, pl_weight: float, pl_every: int, style_mixing: float):
        super().__init__()
        self.pl_weight, self.pl_every, self.style_mixing = pl_weight, pl_every, style_mixing
        self.generator: list[StyleGAN2Generator] = []  # G's raw module, unregistered (its weights are G's)
        self.register_buffer("pl_mean", torch.zeros(()))

    def attach(self, generator: nn.Module) -> None:
        """G's raw module, for the path length's own G pass; G's training-time style-mixing probability."""
        generator.style_mixing = self.style_mixing
        self.generator[:] = [generator]

    def g_loss(self, step: int, inputs: dict[str, torch.Tensor], fake: torch.Tensor,
               real: torch.Tensor) -> torch.Tensor | None:
        if self.pl_weight == 0 or (self.pl_every > 1 and int(step) % self.pl_every):  # (int: eager steps only)
            return None
        half = {k: v[:max(1, v.shape[0] // PL_BATCH_SHRINK)] for k, v in inputs.items()}
        # A gradient of a gradient, in fp32: G's own forward, not the autocast one accelerate.prepare patched in
        # under mixed precision (it re-enables autocast and returns fp32 copies of w, cut from the graph).
        forward = self.generator[0].__dict__.get("_original_forward", self.generator[0])
        with torch.autocast(device_type=fake.device.type, enabled=False):
            images, ws = forward(**half, return_ws=True)
            penalty = path_length_penalty(images, ws, self.pl_mean, PL_DECAY, average=mean_over_ranks)
        return penalty * (self.pl_weight * self.pl_every)


class StyleGAN2Family(Family):
    name = ARCH
    config = StyleGAN2Config
    generator_spec = StyleGAN2Spec
    discriminator_spec = StyleGAN2DiscriminatorSpec
    # stylegan2-ada-pytorch's training choices; a config's own values win.
    defaults = {"model.nz": 512, "model.d_batchnorm": False, "loss.kind": "bce", "loss.r1_gamma": 10.0,
                "loss.r1_every": 16, "loss.style_mixing": 0.9, "loss.pl_weight": 2.0, "loss.pl_every": 4,
                "optim.g_lr": 0.0025, "optim.d_lr": 0.0025, "optim.g_betas": [0.0, 0.99],
                "optim.d_betas": [0.0, 0.99]}

    def check(self, cfg: StyleGAN2Config, shape: tuple[int, int, int], num_classes: int) -> None:
        check_common(cfg, shape, num_classes)
        self._spec(StyleGAN2Spec, cfg, shape, num_classes)  # its checks name the model.* key

    def make_generator_spec(self, cfg: StyleGAN2Config, shape: tuple[int, int, int],
                            num_classes: int) -> StyleGAN2Spec:
        self.check(cfg, shape, num_classes)
        return self._spec(StyleGAN2Spec, cfg, shape, num_classes)

    def make_discriminator_spec(self, cfg: StyleGAN2Config, shape: tuple[int, int, int],
                                num_classes: int) -> StyleGAN2DiscriminatorSpec:
        self.check(cfg, shape, num_classes)
        return self._spec(StyleGAN2DiscriminatorSpec, cfg, shape, num_classes)

    @staticmethod
    def _spec(kind: type[StyleGAN2Spec], cfg: StyleGAN2Config, shape: tuple[int, int, int], num_classes: int):
        channels, height, width = shape
        return kind(arch=ARCH, nz=cfg.nz, w_dim=cfg.w_dim, mapping_layers=cfg.mapping_layers,
                    mapping_lr=cfg.mapping_lr, channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                    mbstd_group=cfg.mbstd_group, channels=channels, height=height, width=width,
                    num_classes=num_classes if cfg.conditional else 0, conditional=cfg.conditional)

    def build_generator(self, spec: StyleGAN2Spec) -> nn.Module:
        return build_stylegan2_generator(spec)

    def build_discriminator(self, spec: StyleGAN2Spec) -> nn.Module:
        return StyleGAN2Discriminator(spec)

    def d_batchnorm(self, cfg: ModelConfig) -> bool:
        return False

    def inputs(self, spec: StyleGAN2Spec) -> tuple[InputSpec, ...]:
        """z (labels) as every family, then truncation and style mixing (distgan.runtime.STYLE_INPUTS)."""
        return (*super().inputs(spec), InputSpec("psi", "float32", (), "psi", default=1.0),
                InputSpec("z2", "float32", (spec.nz,), "normal", default=0.0),
                InputSpec("mix_layer", "int64", (), "layer", default=float(spec.num_ws)))

    def loss_terms(self, cfg: Any, g_spec: StyleGAN2Spec, d_spec: StyleGAN2Spec) -> LossTerms | None:
        """Path length and style mixing (the config checked data.batch_size against model.mbstd_group)."""
        return PathLengthTerms(cfg.loss.pl_weight, cfg.loss.pl_every, cfg.loss.style_mixing)

    def export_metadata(self, spec: StyleGAN2Spec) -> dict[str, str]:
        return {"num_ws": str(spec.num_ws), "truncation": "w"}

    def w_space(self, generator: StyleGAN2Generator) -> WSpace:
        """The mapping (w_avg left alone) and the synthesis with one w for every layer; the noise to redraw is
        each layer's `noise_const` (what eval mode adds)."""
        def synthesis(w: torch.Tensor) -> torch.Tensor:
            return generator.synthesis(w[:, None].expand(-1, generator.num_ws, -1))

        def resample_noise(draw: torch.Generator) -> None:
            for layer in generator.modules():
                if isinstance(layer, SynthesisLayer):
                    noise = torch.randn(layer.noise_const.shape, generator=draw)
                    layer.noise_const.copy_(noise.to(layer.noise_const.device))

        return WSpace(lambda z, labels: generator.mapping(z, labels), synthesis, resample_noise)


FAMILY = StyleGAN2Family()
