"""SRGAN's training step: HR crops -> bicubic LR on the device -> SR = G(LR); content loss, then the GAN.

Two phases, as in Ledig et al. 2017:
- the PSNR warm-up (`pretrain_steps`): G alone on the content loss (SRResNet); D is not run;
- then the GAN phase: one D update on D(cat(HR, SR)) (one forward: a BatchNorm D under DDP
  fails on a second forward before its backward), then G on content + `adv_weight` x the
  adversarial loss, scored by D's unwrapped module with frozen weights (no D all-reduce) on the
  same HR+SR batch (BatchNorm statistics as in the D step).
The phase is a host-side choice on the step number, so the step runs eagerly (never graphed).
Statistics sum on the device like GANStep's (the D ones are 0 in the warm-up); `train/psnr` is the
batch PSNR of SR vs HR on [0, 1].
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

import torch

from distgan.content_loss import ContentLoss
from distgan.data import normalize_images
from distgan.losses import discriminator_loss, generator_loss
from distgan.models.srgan import downsample, random_crops
from distgan.training.state import TrainState

SR_STAT_KEYS = ("loss/content", "loss/adv", "loss/d", "d/real", "d/fake", "train/psnr")


@dataclass(frozen=True)
class SRSettings:
    """The config values the step reads (`model.scale`, `model.hr_patch`, `loss.*`, `train.pretrain_steps`)."""

    scale: int
    hr_patch: int  # 0: the stored size
    adv_weight: float
    pretrain_steps: int
    loss_kind: str = "bce"  # the adversarial loss (distgan.losses)


def psnr(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Batch PSNR in dB of images in [-1, 1] taken to [0, 1] (a log figure; bench/srgan.py measures with piq)."""
    mse = ((sr.float() - hr.float()) / 2).square().mean().clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


class SRGANStep:
    """`step(reals, ema_step)`: one training step on device batches (uint8 NHWC HR images)."""

    IN_PLACE = ("stat_sums", "bad_total", "bad_run")

    def __init__(self, settings: SRSettings, state: TrainState, content: ContentLoss,
                 autocast: Callable[[], AbstractContextManager]):
        self.settings, self.state, self.content, self.autocast = settings, state, content, autocast
        self.device = next(state.g_module.parameters()).device
        self.content.to(self.device)
        self.fp16 = state.scaler.get_scale() != 1.0  # once, at the start: the scale of bf16/fp32 stays 1
        self.stat_sums = torch.zeros(len(SR_STAT_KEYS), device=self.device)
        self.bad_total = torch.zeros((), device=self.device)
        self.bad_run = torch.zeros((), device=self.device)

    def pair(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC -> (LR, HR) float NCHW in [-1, 1]: a random crop, then the bicubic reduce."""
        hr = normalize_images(images)
        if self.settings.hr_patch:
            hr = random_crops(hr, self.settings.hr_patch)
        return downsample(hr, self.settings.scale), hr

    def optimizer_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        scaler = self.state.scaler
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped on the device when a gradient is not finite
        scaler.update(None if self.fp16 else 1.0)
        optimizer.zero_grad(set_to_none=True)

    def __call__(self, reals: list[tuple[torch.Tensor, torch.Tensor | None]], ema_step: int | torch.Tensor) -> None:
        s, settings = self.state, self.settings
        lr, hr = self.pair(reals[-1][0])
        gan = s.progress.step >= settings.pretrain_steps
        zero = torch.zeros((), device=self.device)
        with self.autocast():
            sr = s.G(lr)
        loss_d, d_real, d_fake = zero, zero, zero
        if gan:
            with self.autocast():
                real_logits, fake_logits = s.D(torch.cat([hr, sr.detach()])).chunk(2)
                loss_d = discriminator_loss(settings.loss_kind, real_logits, fake_logits)
                d_real, d_fake = torch.sigmoid(real_logits.float()).mean(), torch.sigmoid(fake_logits.float()).mean()
            self.optimizer_step(s.opt_d, loss_d)
        with self.autocast():
            loss_content = self.content(sr, hr)
            loss_adv = zero
            if gan:
                s.d_module.requires_grad_(False)
                loss_adv = generator_loss(settings.loss_kind, s.d_for_g(torch.cat([hr, sr])).chunk(2)[1])
            loss_g = loss_content + settings.adv_weight * loss_adv
        self.optimizer_step(s.opt_g, loss_g)
        s.d_module.requires_grad_(True)
        s.ema.update(s.g_module, ema_step)
        with torch.no_grad():
            stats = torch.stack([loss_content.detach().float(), loss_adv.detach().float(), loss_d.detach().float(),
                                 d_real.detach(), d_fake.detach(),
                                 psnr(sr.detach(), hr)])
            bad = (~torch.isfinite(stats[:3])).any().float()
            self.bad_total.add_(bad)
            self.bad_run.add_(bad).mul_(bad)
            self.stat_sums.add_(torch.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0))
