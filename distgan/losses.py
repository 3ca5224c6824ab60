"""GAN losses on discriminator logits, and the gradient penalties: WGAN-GP and R1.

Every loss is written on raw logits with stable primitives (softplus,
binary_cross_entropy_with_logits, relu) and computed in float32, so logits
that come out of a bf16/fp16 autocast region are safe to pass in.

| kind      | D loss                                        | G loss                 |
|-----------|-----------------------------------------------|------------------------|
| "bce"     | BCE(D(x), real_label) + BCE(D(G(z)), 0)       | BCE(D(G(z)), 1)        |
| "hinge"   | relu(1 - D(x)) + relu(1 + D(G(z)))            | -D(G(z))               |
| "wgan-gp" | D(G(z)) - D(x)  (+ weight * gradient_penalty) | -D(G(z))               |
| "lsgan"   | (D(x) - real_label)^2 / 2 + D(G(z))^2 / 2     | (D(G(z)) - 1)^2 / 2    |

All terms are means over the batch. The bce G loss is the non-saturating one
(Goodfellow et al. 2014); real_label < 1 is one-sided label smoothing
(Salimans et al. 2016): only the real target is softened, never the fake one.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LOSS_KINDS = ("bce", "hinge", "wgan-gp", "lsgan")

# Losses with a regression target for real images; the others have no target to smooth.
_KINDS_WITH_REAL_TARGET = ("bce", "lsgan")


def _check_kind(kind: str) -> None:
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; valid: {', '.join(LOSS_KINDS)}")


def discriminator_loss(
    kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0
) -> torch.Tensor:
    """Scalar D loss; `real_label` (e.g. 0.9) is the real target of bce and lsgan."""
    _check_kind(kind)
    if not 0.0 < real_label <= 1.0:
        raise ValueError(f"real_label must be in (0, 1], got {real_label}")
    if real_label != 1.0 and kind not in _KINDS_WITH_REAL_TARGET:
        raise ValueError(
            f"real_label={real_label} has no effect on {kind!r} (no target to smooth); "
            f"it applies to {', '.join(_KINDS_WITH_REAL_TARGET)}"
        )
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "bce":
        real_loss = F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_label))
        return real_loss + F.softplus(fake).mean()  # softplus(l) = BCE(l, target 0)
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    return 0.5 * (real - real_label).square().mean() + 0.5 * fake.square().mean()


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Scalar G loss on D's logits for generated images."""
    _check_kind(kind)
    fake = fake_logits.float()
    if kind == "bce":
        return F.softplus(-fake).mean()  # BCE(l, target 1): non-saturating, strong gradient when D wins
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    return 0.5 * (fake - 1.0).square().mean()


def _input_gradient(
    discriminator: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor | None,
) -> torch.Tensor:
    """grad_x sum D(x) at `images`, with the graph kept (create_graph=True) so a penalty on it trains D.

    Runs D in float32 or wider with autocast off: a penalty differentiates
    through a gradient, which bf16 rounds too coarsely. D sees `images` as one
    batch, so a D with BatchNorm couples the per-sample gradients (the config
    refuses these penalties with a BatchNorm D). Pass D's own forward, not one
    that `accelerate.prepare` wrapped in its autocast under mixed precision (the
    trainer does), or the autocast comes back on inside.
    """
    with torch.autocast(device_type=images.device.type, enabled=False):
        logits = discriminator(images, labels)
        (grad,) = torch.autograd.grad(logits.float().sum(), images, create_graph=True)
    return grad


def _penalty_input(images: torch.Tensor) -> torch.Tensor:
    """A detached leaf copy in float32 (float64 stays float64) that records gradients."""
    return images.detach().to(torch.promote_types(images.dtype, torch.float32)).requires_grad_(True)


def gradient_penalty(
    discriminator: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean (||grad_x D(x_hat)|| - 1)^2 on random interpolates x_hat.

    Multiply by a weight (10 in the paper) and add it to the D loss. Precision,
    BatchNorm and autocast caveats: `_input_gradient`.
    """
    dtype = torch.promote_types(real.dtype, torch.float32)
    real, fake = real.detach().to(dtype), fake.detach().to(dtype)
    alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=dtype)
    interpolates = _penalty_input(alpha * real + (1.0 - alpha) * fake)
    grad = _input_gradient(discriminator, interpolates, labels)
    # The epsilon keeps the norm differentiable where the gradient is exactly 0.
    grad_norm = torch.sqrt(grad.flatten(1).square().sum(dim=1) + 1e-12)
    return (grad_norm - 1.0).square().mean()


def r1_penalty(
    discriminator: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    real: torch.Tensor,
    labels: torch.Tensor | None = None,
    gamma: float = 10.0,
) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): gamma / 2 * mean over reals of ||grad_x D(x)||^2; add it to the D loss.

    Penalising D's slope on the real images makes GAN training locally
    convergent: at the equilibrium D is flat on the data instead of
    oscillating around it. Lazy regularisation (StyleGAN2,
    `loss.r1_every` = k): compute it on one D step in k and add it times k,
    so its average weight is unchanged at 1/k of the cost.

    `discriminator` is called as discriminator(images, labels); with
    augmentation, pass one that augments first, so the slope is D's on what
    it sees. Precision, BatchNorm and autocast caveats: `_input_gradient`.
    """
    grad = _input_gradient(discriminator, _penalty_input(real), labels)
    return 0.5 * gamma * grad.flatten(1).square().sum(dim=1).mean()


# The score above which D calls an image real, per loss; wgan-gp has none (see decision_threshold).
FIXED_THRESHOLDS = {"bce": 0.0, "hinge": 0.0, "lsgan": 0.5}


def decision_threshold(kind: str, real_logits: torch.Tensor) -> torch.Tensor:
    """The score above which D calls an image real: 0 for bce/hinge logits, 0.5 for lsgan.

    wgan-gp has no absolute threshold; the mean score of the real images stands in.
    """
    fixed = FIXED_THRESHOLDS.get(kind)
    if fixed is None:
        return real_logits.float().mean()
    return torch.full((), fixed, device=real_logits.device)  # a fill kernel: no host copy (CUDA-graph safe)


def path_lengths(images: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Per image ||J_w^T y|| (StyleGAN2's path length): J the Jacobian of the image w.r.t. the styles `ws`
    [B, L, w_dim], y image-shaped N(0, 1) / sqrt(H W) noise (drawn unless given); the squared norm is averaged
    over the L layers' styles, as stylegan2-ada does. Kept in the graph (create_graph) so a penalty on it trains G.
    """
    if noise is None:
        noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    return grad.square().sum(dim=2).mean(dim=1).sqrt()


def path_length_penalty(images: torch.Tensor, ws: torch.Tensor, pl_mean: torch.Tensor, decay: float = 0.01,
                        average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Path-length regularisation (Karras et al. 2020): mean (length - a)^2, a the running mean of the lengths.

    `pl_mean` (a 0-d tensor, e.g. a buffer that is checkpointed) is moved `decay` of the way to this batch's mean
    length in place, on the device; `average` maps that batch mean to the global one (the mean over ranks), so
    every rank keeps the same a. Lazy use (`loss.pl_every` = k): one G step in k, weighted by k.
    """
    lengths = path_lengths(images, ws)
    batch_mean = lengths.mean().detach()
    mean = pl_mean.lerp(average(batch_mean) if average is not None else batch_mean, decay)
    pl_mean.copy_(mean)
    return (lengths - mean).square().mean()
