"""The ResNet family (`model.arch: resnet`): the G and D of SNGAN (Miyato et al. 2018) with BigGAN's additions
(Brock et al. 2019), at 28 (7x7 base), 32, 64, 128 and 256 px.

- G: z -> Linear -> base x base -> up-sampling residual blocks (BatchNorm, ReLU, nearest x2, 3x3 convs, a 1x1
  shortcut) -> BatchNorm, ReLU, 3x3 conv, tanh. BatchNorms are conditional: a gain 1 + Linear(c) and a bias
  Linear(c) per channel, where c is BigGAN's shared class embedding (`model.shared_dim`) and, with
  `model.hier_z`, one chunk of z per block (the first chunk feeds the Linear). Unconditional without
  hier_z: plain BatchNorm. Spectral norm on G's convs and linears too (BigGAN; `model.g_spectral_norm`).
- D: down-sampling residual blocks (ReLU, 3x3 convs, 2x2 average pooling; the first block pre-activation
  free, as SNGAN's "optimized" block) and one block without down-sampling, ReLU, sum over positions, a
  Linear head plus the class projection <embed(y), h>; spectral norm on every layer.
- Self-attention (SAGAN; BigGAN's layout: 1x1 theta/phi/g convs, phi and g max-pooled, a learned gate
  initialised at 0) after G's block and D's block at `model.attention_res`.
- Widths: `model.channel_mult` per level from the base to the output (G; D mirrors it), times ngf / ndf.
- Orthogonal init; hinge loss, Adam (0, 0.999) and lrs 1e-4 (G) / 4e-4 (D) by default.
Every op exports to plain ONNX (Resize, MatMul, Softmax, MaxPool); export bakes spectral norm into the weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from distgan.models.discriminator import Discriminator, add_spectral_norms
from distgan.models.family import Family, check_common
from distgan.models.specs import ModelConfig, ModelSpec

RESOLUTIONS = (28, 32, 64, 128, 256)
# Default widths per level, base first (BigGAN's architectures; 28 like 32).
CHANNEL_MULT = {28: (4, 4, 4), 32: (4, 4, 4, 4), 64: (16, 8, 4, 2, 1), 128: (16, 16, 8, 4, 2, 1),
                256: (16, 16, 8, 8, 4, 2, 1)}


@dataclass
class ResNetConfig(ModelConfig):
    spectral_norm: bool = True  # on D's layers (SNGAN); the shared key, on by default here
    g_spectral_norm: bool = True  # on G's convs and linears too (BigGAN)
    attention_res: int = 0  # self-attention in G and D at this resolution; 0 = off
    channel_mult: list[int] | None = None  # widths per level, base first, x ngf (G) / ndf (D); null = per size
    hier_z: bool = False  # BigGAN's hierarchical z: a chunk of z into every G block's BatchNorms
    shared_dim: int = 128  # BigGAN's shared class embedding, read by every conditional BatchNorm


@dataclass(frozen=True)
class ResNetGeneratorSpec(ModelSpec):
    KIND = "generator"
    arch: str
    nz: int
    ngf: int
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool
    channel_mult: tuple[int, ...]
    attention_res: int
    hier_z: bool
    shared_dim: int
    spectral_norm: bool


@dataclass(frozen=True)
class ResNetDiscriminatorSpec(ModelSpec):
    KIND = "discriminator"
    arch: str
    ndf: int
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool
    channel_mult: tuple[int, ...]
    attention_res: int
    spectral_norm: bool


def base_size(resolution: int) -> int:
    return 7 if resolution == 28 else 4


def block_count(resolution: int) -> int:
    """Up-sampling blocks of G (= down-sampling blocks of D)."""
    return int(math.log2(resolution // base_size(resolution)))


def attention_resolutions(resolution: int) -> tuple[int, ...]:
    """Where both G (after an up block) and D (after a down block) have features: base x 2 .. resolution / 2."""
    base = base_size(resolution)
    return tuple(base * 2 ** i for i in range(1, block_count(resolution)))


def z_chunks(nz: int, blocks: int) -> list[int]:
    """hier_z: z split into one chunk for the base Linear and one per block (the first takes the remainder)."""
    chunk = nz // (blocks + 1)
    return [nz - chunk * blocks] + [chunk] * blocks


# --- layers -----------------------------------------------------------------------------------


class ConditionalBN(nn.Module):
    """BatchNorm with a gain 1 + Linear(c) and a bias Linear(c) per channel (BigGAN's ccbn); plain BatchNorm
    with its own affine when there is no condition (cond_dim 0)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=cond_dim == 0)
        self.gain = nn.Linear(cond_dim, channels, bias=False) if cond_dim else None
        self.bias = nn.Linear(cond_dim, channels, bias=False) if cond_dim else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = self.bn(x)
        if self.gain is None:
            return out
        gain, bias = (t.unsqueeze(-1).unsqueeze(-1) for t in (self.gain(cond), self.bias(cond)))
        return out * (1 + gain) + bias


class GBlock(nn.Module):
    """BN, ReLU, nearest x2, 3x3 conv, BN, ReLU, 3x3 conv; shortcut: nearest x2, 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int):
        super().__init__()
        self.bn1, self.bn2 = ConditionalBN(in_ch, cond_dim), ConditionalBN(out_ch, cond_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DBlock(nn.Module):
    """[ReLU,] 3x3 conv, ReLU, 3x3 conv[, avg-pool 2]; shortcut: 1x1 conv and pool (pool first in the first
    block, whose input is the image: SNGAN's optimized block, no ReLU on pixels)."""

    def __init__(self, in_ch: int, out_ch: int, down: bool, first: bool):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or down) else None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x if self.first else F.relu(x))
        h = self._pool(self.conv2(F.relu(h)))
        if self.shortcut is None:
            return h + x
        return h + (self.shortcut(self._pool(x)) if self.first else self._pool(self.shortcut(x)))


class SelfAttention(nn.Module):
    """SAGAN / BigGAN self-attention: x + gamma * o(softmax(theta^T phi) g), phi and g max-pooled by 2.

    Shapes come from the module's own size (not from x.shape), so the export keeps only the batch dynamic.
    """

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.channels, self.size = channels, size
        self.theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.o = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 1, N, C/8] queries against [B, 1, N/4, C/8] keys, values [B, 1, N/4, C/2]; no 1/sqrt(d) scale (BigGAN).
        q = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1)
        k = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2).unsqueeze(1)
        v = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2).unsqueeze(1)
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # softmax(q k^T) v: a fused kernel in training
        o = o.squeeze(1).transpose(1, 2).unflatten(2, (self.size, self.size))  # [B, C/2, H, W]
        return x + self.gamma * self.o(o)


# --- networks ---------------------------------------------------------------------------------


class ResNetGenerator(nn.Module):
    """z [B, nz] (+ labels [B] when conditional) -> images [B, C, H, W] in [-1, 1]."""

    def __init__(self, spec: ResNetGeneratorSpec):
        super().__init__()
        self.spec = spec
        self.conditional = spec.conditional
        blocks, self.base = block_count(spec.height), base_size(spec.height)
        widths = [spec.ngf * m for m in spec.channel_mult]
        self.base_channels = widths[0]
        self.chunks = z_chunks(spec.nz, blocks) if spec.hier_z else [spec.nz]
        z_cond = self.chunks[1] if spec.hier_z else 0
        cond_dim = (spec.shared_dim if spec.conditional else 0) + z_cond
        self.shared = nn.Embedding(spec.num_classes, spec.shared_dim) if spec.conditional else None
        self.linear = nn.Linear(self.chunks[0], widths[0] * self.base * self.base)
        self.blocks = nn.ModuleList(GBlock(i, o, cond_dim) for i, o in zip(widths, widths[1:]))
        sizes = [self.base * 2 ** (i + 1) for i in range(blocks)]
        self.attention_after = sizes.index(spec.attention_res) if spec.attention_res else -1
        self.attention = SelfAttention(widths[self.attention_after + 1], spec.attention_res) \
            if spec.attention_res else None
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], spec.channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional != (labels is not None):  # resolved at trace time: free in ONNX
            raise ValueError("this generator is conditional: pass labels (int64 class ids, shape [B])"
                             if self.conditional else "labels given to an unconditional generator")
        zs = torch.split(z, self.chunks, dim=1) if self.spec.hier_z else (z,)
        shared = self.shared(labels) if self.shared is not None else None
        h = self.linear(zs[0]).unflatten(1, (self.base_channels, self.base, self.base))
        for i, block in enumerate(self.blocks):
            parts = [t for t in (shared, zs[i + 1] if self.spec.hier_z else None) if t is not None]
            h = block(h, torch.cat(parts, dim=1) if len(parts) > 1 else parts[0] if parts else None)
            if i == self.attention_after:
                h = self.attention(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


def discriminator_parts(spec: ResNetDiscriminatorSpec) -> tuple[nn.Sequential, nn.Module, int]:
    """(features ending in ReLU, head: sum over positions + Linear, feature channels)."""
    blocks = block_count(spec.height)
    widths = [spec.ndf * m for m in reversed(spec.channel_mult)]  # finest first; the last block keeps its size
    layers: list[nn.Module] = []
    in_ch, size = spec.channels, spec.height
    for i, out_ch in enumerate(widths):
        down = i < blocks
        layers.append(DBlock(in_ch, out_ch, down=down, first=i == 0))
        in_ch, size = out_ch, size // 2 if down else size
        if down and size == spec.attention_res:
            layers.append(SelfAttention(out_ch, size))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers), nn.Sequential(SumPool(), nn.Linear(in_ch, 1)), in_ch


class SumPool(nn.Module):
    """h summed over positions: [B, C, H, W] -> [B, C] (SNGAN's global sum pooling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(2, 3))


def orthogonal_init(module: nn.Module) -> None:
    """BigGAN's init: orthogonal weights for every conv, linear and embedding, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
        nn.init.orthogonal_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def baked(generator: ResNetGenerator) -> ResNetGenerator:
    """The same G in eval mode without spectral norm, its weights W / sigma(W) as plain tensors: what the exporter
    traces. (Built afresh: removing the parametrizations of a deep copy would also strip the original's, whose
    class the copy shares.)"""
    plain = ResNetGenerator(dataclasses.replace(generator.spec, spectral_norm=False))
    weights = {}
    with torch.no_grad():
        for name, module in generator.eval().named_modules():
            prefix = f"{name}." if name else ""
            if parametrize.is_parametrized(module, "weight"):
                weights[prefix + "weight"] = module.weight.detach().clone()
            for key, tensor in module.named_parameters(recurse=False):
                weights[prefix + key] = tensor.detach()
            for key, tensor in module.named_buffers(recurse=False):
                weights[prefix + key] = tensor.detach()
    plain.load_state_dict({k: v for k, v in weights.items() if ".parametrizations." not in k})
    return plain.eval()


class ResNetFamily(Family):
    name = "resnet"
    config = ResNetConfig
    generator_spec = ResNetGeneratorSpec
    discriminator_spec = ResNetDiscriminatorSpec
    defaults = {"loss.kind": "hinge", "optim.g_lr": 1e-4, "optim.d_lr": 4e-4, "optim.g_betas": [0.0, 0.999],
                "optim.d_betas": [0.0, 0.999]}

    def check(self, cfg: ResNetConfig, shape: tuple[int, int, int], num_classes: int) -> None:
        check_common(cfg, shape, num_classes)
        _, height, width = shape
        if height != width or height not in RESOLUTIONS:
            raise ValueError(f"model.arch 'resnet' builds square images of {', '.join(map(str, RESOLUTIONS))} px; "
                             f"the data is {height}x{width}")
        valid = attention_resolutions(height)
        if cfg.attention_res and cfg.attention_res not in valid:
            raise ValueError(f"model.attention_res {cfg.attention_res} is not a resolution of the {height}-px "
                             f"network's blocks; valid: 0 (off), {', '.join(map(str, valid))}")
        levels = block_count(height) + 1
        if cfg.channel_mult is not None and (len(cfg.channel_mult) != levels or min(cfg.channel_mult) < 1):
            raise ValueError(f"model.channel_mult needs {levels} positive widths at {height} px (base first, e.g. "
                             f"{list(CHANNEL_MULT[height])}), got {list(cfg.channel_mult)}")
        if cfg.hier_z and cfg.nz < levels:
            raise ValueError(f"model.nz must be >= {levels} with model.hier_z at {height} px (a chunk per block)")
        if cfg.conditional and cfg.shared_dim < 1:
            raise ValueError(f"model.shared_dim must be >= 1 for a conditional model, got {cfg.shared_dim}")
        mults = cfg.channel_mult or CHANNEL_MULT[height]
        if cfg.attention_res and min(cfg.ngf, cfg.ndf) * min(mults) < 8:
            raise ValueError("model.attention_res needs >= 8 channels at every level (its theta/phi convs have "
                             "channels / 8): raise model.ngf / model.ndf")

    def make_generator_spec(self, cfg: ResNetConfig, shape: tuple[int, int, int],
                            num_classes: int) -> ResNetGeneratorSpec:
        self.check(cfg, shape, num_classes)
        return ResNetGeneratorSpec(
            arch=cfg.arch, nz=cfg.nz, ngf=cfg.ngf, channels=shape[0], height=shape[1], width=shape[2],
            num_classes=num_classes, conditional=cfg.conditional,
            channel_mult=tuple(cfg.channel_mult or CHANNEL_MULT[shape[1]]), attention_res=cfg.attention_res,
            hier_z=cfg.hier_z, shared_dim=cfg.shared_dim, spectral_norm=cfg.g_spectral_norm)

    def make_discriminator_spec(self, cfg: ResNetConfig, shape: tuple[int, int, int],
                                num_classes: int) -> ResNetDiscriminatorSpec:
        self.check(cfg, shape, num_classes)
        return ResNetDiscriminatorSpec(
            arch=cfg.arch, ndf=cfg.ndf, channels=shape[0], height=shape[1], width=shape[2], num_classes=num_classes,
            conditional=cfg.conditional, channel_mult=tuple(cfg.channel_mult or CHANNEL_MULT[shape[1]]),
            attention_res=cfg.attention_res, spectral_norm=cfg.spectral_norm)

    def build_generator(self, spec: ResNetGeneratorSpec) -> nn.Module:
        generator = ResNetGenerator(spec)
        generator.apply(orthogonal_init)
        if spec.spectral_norm:  # not the shared embedding (BigGAN leaves it plain)
            for module in [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
                nn.utils.parametrizations.spectral_norm(module)
        return generator

    def build_discriminator(self, spec: ResNetDiscriminatorSpec) -> nn.Module:
        discriminator = Discriminator(spec, *discriminator_parts(spec))
        discriminator.apply(orthogonal_init)
        return add_spectral_norms(discriminator) if spec.spectral_norm else discriminator

    def d_batchnorm(self, cfg: ModelConfig) -> bool:
        return False  # D has no BatchNorm

    def export_module(self, generator: nn.Module) -> nn.Module:
        return baked(generator)


FAMILY = ResNetFamily()
