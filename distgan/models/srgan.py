"""SRGAN's networks (Ledig et al. 2017) and its data on the device: HR crops, the bicubic LR.

- G, SRResNet: a 9x9 conv + PReLU, `blocks` residual blocks (conv-BN-PReLU-conv-BN plus the
  input), a conv-BN with the long skip, log2(scale) up-sampling stages (conv to 4x the width,
  PixelShuffle(2), PReLU) and a 9x9 conv to the image, tanh: [-1, 1] in and out. Fully
  convolutional, so one export takes any height and width (and tiles: `receptive_radius`).
- D: the paper's VGG-style stack: 3x3 convs, widths 64 -> 512 doubling every two layers, every
  second conv of stride 2, BatchNorm after the first, LeakyReLU(0.2); then an adaptive pool, a
  dense 1024, LeakyReLU and one logit. The pool (1x1) lets D take any crop size; the paper's
  96x96 crops give 6x6 maps, where the paper flattens.
- The LR input is made on the device from the HR batch: antialiased bicubic down-sampling
  (torch's `interpolate(..., antialias=True)`, which matches PIL's `Image.resize(BICUBIC)`
  reduce; tests/test_srgan.py measures how closely).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from distgan.content_loss import ContentLoss, find_vgg19_weights, vgg_features
from distgan.models.family import Family, InputSpec, LossTerms, check_common
from distgan.models.specs import ModelConfig, ModelSpec

SCALES = (2, 4)


@dataclass(frozen=True)
class SRGeneratorSpec(ModelSpec):
    """Everything that fixes SRResNet's architecture; height x width is the HR training patch (G takes any size)."""

    KIND = "generator"
    arch: str
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool
    scale: int  # 2 or 4
    ngf: int  # feature channels of every block (the paper: 64)
    blocks: int  # residual blocks (the paper: 16)


@dataclass(frozen=True)
class SRDiscriminatorSpec(ModelSpec):
    KIND = "discriminator"
    arch: str
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool
    ndf: int  # first conv's channels; doubles every two convs up to 8x (the paper: 64)
    dense: int  # the dense layer before the logit (the paper: 1024)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.PReLU(width),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """LR image [N, C, h, w] in [-1, 1] -> SR image [N, C, scale*h, scale*w] in [-1, 1]."""

    def __init__(self, spec: SRGeneratorSpec):
        super().__init__()
        self.spec = spec
        w = spec.ngf
        self.head = nn.Sequential(nn.Conv2d(spec.channels, w, 9, padding=4), nn.PReLU(w))
        self.body = nn.Sequential(*[ResidualBlock(w) for _ in range(spec.blocks)],
                                  nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w))
        upsample = []
        for _ in range(int(math.log2(spec.scale))):
            upsample += [nn.Conv2d(w, 4 * w, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(w)]
        self.tail = nn.Sequential(*upsample, nn.Conv2d(w, spec.channels, 9, padding=4))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.head(image)
        return torch.tanh(self.tail(features + self.body(features)))


def receptive_radius(spec: SRGeneratorSpec) -> int:
    """How many LR pixels away an input pixel can change an output pixel (rounded up to LR pixels).

    Tiles agree with the whole image beyond this distance from a tile's edge: zero padding
    at a tile border reaches no further.
    """
    lr = 4 + 2 * spec.blocks + 1  # head 9x9, two 3x3 per block, the body's last 3x3
    stages = int(math.log2(spec.scale))
    hr = lr * spec.scale + sum(spec.scale // 2**k for k in range(stages)) + 4  # each stage's 3x3, the last 9x9
    return math.ceil(hr / spec.scale)


class SRDiscriminator(nn.Module):
    """HR image [N, C, H, W] in [-1, 1] -> one logit per image."""

    def __init__(self, spec: SRDiscriminatorSpec):
        super().__init__()
        self.spec = spec
        w = spec.ndf
        layers: list[nn.Module] = [nn.Conv2d(spec.channels, w, 3, padding=1), nn.LeakyReLU(0.2)]
        widths = [(w, w, 2), (w, 2 * w, 1), (2 * w, 2 * w, 2), (2 * w, 4 * w, 1), (4 * w, 4 * w, 2),
                  (4 * w, 8 * w, 1), (8 * w, 8 * w, 2)]
        for c_in, c_out, stride in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, spec.dense),
                                  nn.LeakyReLU(0.2), nn.Linear(spec.dense, 1))

    def forward(self, hr: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One logit per image (`labels`: the trainer's D signature; SRGAN's D is unconditional)."""
        return self.head(self.features(hr)).squeeze(1)


def downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic reduce by `scale` (float NCHW in [-1, 1]; H and W multiples of scale), clamped."""
    n, c, h, w = hr.shape
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}")
    lr = F.interpolate(hr.float(), size=(h // scale, w // scale), mode="bicubic", antialias=True,
                       align_corners=False)
    return lr.clamp_(-1.0, 1.0).to(hr.dtype)


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random `size` x `size` crop per image, on the images' device (no host sync)."""
    n, c, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the images ({h}x{w})")
    if size == h == w:
        return images
    device = images.device
    top = torch.randint(0, h - size + 1, (n, 1, 1), device=device, generator=generator)
    left = torch.randint(0, w - size + 1, (n, 1, 1), device=device, generator=generator)
    offsets = torch.arange(size, device=device)
    rows = (top + offsets.view(1, size, 1)).expand(n, size, size)
    cols = (left + offsets.view(1, 1, size)).expand(n, size, size)
    batch = torch.arange(n, device=device).view(n, 1, 1).expand(n, size, size)
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def comparison_rows(generator: nn.Module, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The images people look at, for HR float NCHW in [-1, 1]: rows of LR (nearest, enlarged), bicubic,
    SR and HR, each [N, C, H, W] (4N images, row by row: N columns of a grid)."""
    lr = downsample(hr, scale)
    with torch.no_grad():
        sr = generator(lr).float()
    nearest = F.interpolate(lr, scale_factor=scale, mode="nearest")
    bicubic = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)
    return torch.cat([nearest, bicubic, sr, hr.float()])


# --- the family (`model.arch: srgan`) ----------------------------------------------------------


@dataclass
class SRGANConfig(ModelConfig):
    """SRGAN's `model:` keys (ngf / ndf are G's and D's widths; nz is unused: G takes no latent)."""

    scale: int = 4  # 2 | 4: HR side / LR side
    hr_patch: int = 96  # random HR crops of this side (the paper's 96); 0: the stored images whole
    blocks: int = 16  # G's residual blocks
    d_dense: int = 1024  # D's dense layer


class SRLossTerms(LossTerms):
    """The content loss (SR vs HR) on every G update, and the adversarial weight: 0 in the PSNR warm-up
    (G on the content loss alone: SRResNet), `loss.adv_weight` after."""

    def __init__(self, content: ContentLoss, adv_weight: float, pretrain_steps: int):
        super().__init__()
        self.content, self.adv_weight, self.pretrain_steps = content, adv_weight, pretrain_steps

    def adversarial_weight(self, step: int | torch.Tensor) -> float | torch.Tensor:
        return self.adv_weight * (step >= self.pretrain_steps)

    def g_loss(self, step: int | torch.Tensor, inputs: dict[str, torch.Tensor], fake: torch.Tensor,
               real: torch.Tensor) -> torch.Tensor:
        return self.content(fake, real)


def center_multiple(images: torch.Tensor, scale: int) -> torch.Tensor:
    """The centered crop whose sides are multiples of `scale` (sample grids take whole stored images)."""
    h, w = images.shape[-2:]
    top, left = (h % scale) // 2, (w % scale) // 2
    return images[..., top:top + h - h % scale, left:left + w - w % scale]


class SRGANFamily(Family):
    name = "srgan"
    config = SRGANConfig
    generator_spec = SRGeneratorSpec
    discriminator_spec = SRDiscriminatorSpec
    # The paper's Adam (lr 1e-4, beta1 0.9) and BCE; grids of 8 images: rows LR, bicubic, SR, HR.
    defaults = {"loss.kind": "bce", "optim.g_lr": 1e-4, "optim.d_lr": 1e-4, "optim.g_betas": [0.9, 0.999],
                "optim.d_betas": [0.9, 0.999], "log.sample_grid": 8}

    def check(self, cfg: SRGANConfig, shape: tuple[int, int, int], num_classes: int) -> None:
        check_common(cfg, shape, num_classes)
        channels, height, width = shape
        if cfg.scale not in SCALES:
            raise ValueError(f"model.scale must be one of {list(SCALES)}, got {cfg.scale}")
        if cfg.conditional:
            raise ValueError("model.conditional: srgan is not class-conditional; set it false")
        if cfg.spectral_norm:
            raise ValueError("model.spectral_norm: srgan's D is the paper's BatchNorm D; set it false")
        for key in ("blocks", "d_dense"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(cfg, key)}")
        side = cfg.hr_patch or None
        if cfg.hr_patch < 0 or (side and (side % cfg.scale or side > min(height, width))):
            raise ValueError(f"model.hr_patch must be 0 (whole images) or a multiple of model.scale={cfg.scale} "
                             f"no larger than the {height}x{width} data, got {cfg.hr_patch}")
        if side is None and (height % cfg.scale or width % cfg.scale):
            raise ValueError(f"model.hr_patch=0 trains on whole {height}x{width} images, which model.scale="
                             f"{cfg.scale} does not divide; set model.hr_patch")
        if (side or min(height, width)) < 16:
            raise ValueError(f"model.hr_patch: HR patches of {side or f'{height}x{width}'} are too small for D "
                             "(four stride-2 convs); use 16 or more")

    def check_spec(self, spec: SRGeneratorSpec | SRDiscriminatorSpec) -> None:
        """A spec read from JSON: its HR patch (height x width) checked as whole images of that size would be
        (D's spec holds no scale; its patch is a multiple of 2 whatever the scale)."""
        if isinstance(spec, SRGeneratorSpec):
            cfg = SRGANConfig(arch=spec.arch, scale=spec.scale, hr_patch=0, ngf=spec.ngf, blocks=spec.blocks)
        else:
            cfg = SRGANConfig(arch=spec.arch, scale=2, hr_patch=0, ndf=spec.ndf, d_dense=spec.dense)
        self.check(cfg, (spec.channels, spec.height, spec.width), spec.num_classes)

    def make_generator_spec(self, cfg: SRGANConfig, shape: tuple[int, int, int], num_classes: int) -> SRGeneratorSpec:
        self.check(cfg, shape, num_classes)
        channels, height, width = shape
        return SRGeneratorSpec(arch=cfg.arch, channels=channels, height=cfg.hr_patch or height,
                               width=cfg.hr_patch or width, num_classes=0, conditional=False, scale=cfg.scale,
                               ngf=cfg.ngf, blocks=cfg.blocks)

    def make_discriminator_spec(self, cfg: SRGANConfig, shape: tuple[int, int, int],
                                num_classes: int) -> SRDiscriminatorSpec:
        self.check(cfg, shape, num_classes)
        channels, height, width = shape
        return SRDiscriminatorSpec(arch=cfg.arch, channels=channels, height=cfg.hr_patch or height,
                                   width=cfg.hr_patch or width, num_classes=0, conditional=False, ndf=cfg.ndf,
                                   dense=cfg.d_dense)

    def build_generator(self, spec: SRGeneratorSpec) -> SRResNet:
        return SRResNet(spec)

    def build_discriminator(self, spec: SRDiscriminatorSpec) -> SRDiscriminator:
        return SRDiscriminator(spec)

    def latent_size(self, spec: SRGeneratorSpec) -> int:
        return 0

    def inputs(self, spec: SRGeneratorSpec) -> tuple[InputSpec, ...]:
        lr_shape = (spec.channels, spec.height // spec.scale, spec.width // spec.scale)
        return (InputSpec("image", "float32", lr_shape, "image", ("", "height", "width")),)

    def generator_inputs(self, spec: SRGeneratorSpec, z: torch.Tensor, labels: torch.Tensor | None,
                         real: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if real is None:
            raise ValueError("srgan's G takes an image: give the HR images whose LR it upscales")
        return {"image": downsample(real, spec.scale)}

    def prepare_batch(self, spec: SRGeneratorSpec, real: torch.Tensor) -> torch.Tensor:
        return random_crops(real, spec.height) if real.shape[-2:] != (spec.height, spec.width) else real

    def d_batchnorm(self, cfg: ModelConfig) -> bool:
        return True

    def loss_terms(self, cfg, g_spec: SRGeneratorSpec, d_spec: SRDiscriminatorSpec) -> SRLossTerms:
        features = None
        if cfg.loss.content == "features":
            features = vgg_features(find_vgg19_weights(cfg.loss.vgg_weights or None), cfg.loss.vgg_layer)
        return SRLossTerms(ContentLoss(cfg.loss.content, features), cfg.loss.adv_weight, cfg.train.pretrain_steps)

    def sample_images(self, generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None,
                      real: torch.Tensor | None) -> torch.Tensor:
        return comparison_rows(generator, center_multiple(real, generator.spec.scale), generator.spec.scale)

    def export_metadata(self, spec: SRGeneratorSpec) -> dict[str, str]:
        """What distgan.image_runtime (distgan-upscale) reads."""
        return {"task": "super-resolution", "scale": str(spec.scale), "noise_channels": "0", "input_range": "-1,1"}


FAMILY = SRGANFamily()
