"""The GAN step: `d_steps` discriminator updates (each on a fresh real batch), one generator update, the EMA.

The GAN-specific DDP points:
- D sees real and fake in ONE forward (`D(cat(real, fake))`): a second forward
  of a BatchNorm D under DDP before its backward fails in-place;
- the G update calls D's *unwrapped* module with its weights frozen, so no D
  gradient is computed or all-reduced during the G step; a BatchNorm D sees the
  same real+fake batch there too (fake alone would give other batch statistics,
  which G learns to game).
Loss scaling: one GradScaler for both optimisers; per-optimiser unscale and clip.

The in-place contract: the same object runs eagerly and as a CUDA graph
(`distgan/training/graph.py`), and a graph replays the kernels it recorded on the
tensors it recorded. So everything the step changes is changed in place: the
weights and optimiser state (the optimisers do so), the EMA, and the running
statistics below, whose names `GANStep.IN_PLACE` lists; rebinding one of them
raises at once instead of silently breaking the replay.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, NamedTuple

import torch

from distgan.augment import augment, parse_policy
from distgan.config import Config
from distgan.data import normalize_images
from distgan.losses import decision_threshold, discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from distgan.training.state import TrainState

# Averaged over each log interval. d/r_t is ADA's overfitting heuristic E[sign(D(real))] on what D sees:
# near 0 while D cannot tell the training images from G's, towards 1 as it memorises them.
STAT_KEYS = ("loss/d", "loss/g", "d/real", "d/fake", "d/fooled", "d/r_t")
DeviceBatch = tuple[torch.Tensor, torch.Tensor | None]  # uint8 NHWC images and int64 labels, on the device


class DStep(NamedTuple):
    """What one D update used and gave; the G update that follows reads its fakes from here."""

    real: torch.Tensor
    labels: torch.Tensor | None
    inputs: dict[str, torch.Tensor]  # G's named inputs
    fake: torch.Tensor  # with its graph when the G update follows
    fake_labels: torch.Tensor | None
    real_logits: torch.Tensor
    fake_logits: torch.Tensor
    loss: torch.Tensor


def d_confidence(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Mean D output on the scale people read: a probability for bce, the raw score otherwise."""
    return torch.sigmoid(logits.float()).mean() if kind == "bce" else logits.float().mean()


def fooled_rate(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """How often D takes a fake for real (its decision threshold depends on the loss)."""
    return (fake_logits.float() > decision_threshold(kind, real_logits)).float().mean()


def real_sign(kind: str, real_logits: torch.Tensor) -> torch.Tensor:
    """E[sign(D(real) - threshold)]: ADA's r_t (meaningless for wgan-gp, whose threshold is the batch's own mean:
    the log leaves it out)."""
    return torch.sign(real_logits.float() - decision_threshold(kind, real_logits)).mean()


class GANStep:
    """`step(reals, ema_step)`: one training step on device batches; `ema_step` may be a device tensor."""

    IN_PLACE = ("stat_sums", "bad_total", "bad_run")

    def __init__(self, cfg: Config, state: TrainState, num_classes: int,
                 autocast: Callable[[], AbstractContextManager]):
        self.cfg, self.state, self.num_classes, self.autocast = cfg, state, num_classes, autocast
        self.device = next(state.g_module.parameters()).device
        self.g_spec = state.g_module.spec
        self.latent_size = state.family.latent_size(self.g_spec)
        self.d_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in state.d_module.modules())
        self.fp16 = cfg.train.mixed_precision == "fp16"
        # The penalty differentiates through a gradient, in fp32: D's own forward, not the autocast one
        # accelerate.prepare patched in under mixed precision (it would re-enable autocast inside).
        self.d_for_penalty = state.d_module.__dict__.get("_original_forward", state.d_module)
        self.policy = parse_policy(cfg.aug.policy)
        self.d_updates = 0  # a host counter for lazy R1 (so a graphed step needs r1_every = 1: graph.py)
        # One vector of sums: a handful of kernels per step, not dozens.
        self.stat_sums = torch.zeros(len(STAT_KEYS), device=self.device)
        self.bad_total = torch.zeros((), device=self.device)  # non-finite steps since the start
        self.bad_run = torch.zeros((), device=self.device)  # consecutive non-finite steps

    def __setattr__(self, name: str, value) -> None:
        if name in self.IN_PLACE and name in self.__dict__:
            raise AttributeError(f"GANStep.{name} is changed in place only (a CUDA graph of the step keeps "
                                 f"updating the tensor it recorded); use {name}.copy_() or .zero_()")
        super().__setattr__(name, value)

    def seen_by_d(self, images: torch.Tensor) -> torch.Tensor:
        """Every image D sees, real or fake, in the D and the G step: augmented when aug.policy is set."""
        return augment(images, self.policy, self.state.augment_p.p) if self.policy else images

    def r1(self, real: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Lazy R1 (StyleGAN2): on one D update in r1_every, weighted by r1_every; zero elsewhere."""
        loss = self.cfg.loss
        due = loss.r1_gamma > 0 and self.d_updates % loss.r1_every == 0
        self.d_updates += 1
        if not due:
            return torch.zeros((), device=self.device)
        penalty = r1_penalty(lambda x, y: self.d_for_penalty(self.seen_by_d(x), y), real, labels, loss.r1_gamma)
        return loss.r1_every * penalty

    def optimizer_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
        scaler = self.state.scaler
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # per optimiser: clip sees true gradients
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        scaler.step(optimizer)  # skipped on the device when a gradient is not finite
        scaler.update(None if self.fp16 else 1.0)
        optimizer.zero_grad(set_to_none=True)

    def draw(self, real: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """G's named inputs for one batch (the family's, from fresh latents and class ids) and those class ids."""
        B = self.cfg.data.batch_size
        z = torch.randn(B, self.latent_size, device=self.device)
        fake_labels = torch.randint(0, self.num_classes, (B,), device=self.device) if self.num_classes else None
        return self.state.family.generator_inputs(self.g_spec, z, fake_labels, real), fake_labels

    def d_update(self, images: torch.Tensor, labels: torch.Tensor | None, step: int | torch.Tensor,
                 keep_fake_graph: bool) -> DStep:
        """One D update on a fresh real batch; the fakes keep their graph when the G update follows."""
        cfg, s, kind, B = self.cfg, self.state, self.cfg.loss.kind, self.cfg.data.batch_size
        real = s.family.prepare_batch(self.g_spec, normalize_images(images))
        inputs, fake_labels = self.draw(real)
        with torch.set_grad_enabled(keep_fake_graph), self.autocast():
            fake = s.G(**inputs)
        with self.autocast():
            both = self.seen_by_d(torch.cat([real, fake.detach()]).contiguous(memory_format=torch.channels_last))
            both_labels = torch.cat([labels, fake_labels]) if self.num_classes else None
            real_logits, fake_logits = s.D(both, both_labels).split(B)
            loss_d = discriminator_loss(kind, real_logits, fake_logits, cfg.loss.real_label)
            if kind == "wgan-gp":
                loss_d = loss_d + cfg.loss.gp_weight * gradient_penalty(self.d_for_penalty, real, fake.detach(), labels)
            if cfg.loss.r1_gamma > 0:
                loss_d = loss_d + self.r1(real, labels)
            extra = s.loss_terms.d_loss(step, real, labels) if s.loss_terms is not None else None
            if extra is not None:
                loss_d = loss_d + extra
        if cfg.aug.adaptive:
            s.augment_p.accumulate(real_logits)
        self.optimizer_step(s.opt_d, loss_d, s.d_module.parameters())
        return DStep(real, labels, inputs, fake, fake_labels, real_logits, fake_logits, loss_d)

    def g_update(self, d: DStep, step: int | torch.Tensor) -> torch.Tensor:
        """One G update on the fakes of the last D update, scored by D's frozen, unwrapped module."""
        s, kind, B = self.state, self.cfg.loss.kind, self.cfg.data.batch_size
        s.d_module.requires_grad_(False)
        with self.autocast():
            if self.d_batchnorm:  # same real+fake batch statistics as in the D step, or G games them
                both = self.seen_by_d(torch.cat([d.real, d.fake]).contiguous(memory_format=torch.channels_last))
                both_labels = torch.cat([d.labels, d.fake_labels]) if self.num_classes else None
                fake_scores = s.d_for_g(both, both_labels)[B:]
            else:
                fake_scores = s.d_for_g(self.seen_by_d(d.fake), d.fake_labels)
            loss_g = generator_loss(kind, fake_scores)
            extra = s.loss_terms.g_loss(step, d.inputs, d.fake) if s.loss_terms is not None else None
            if extra is not None:
                loss_g = loss_g + extra
        self.optimizer_step(s.opt_g, loss_g, s.g_module.parameters())
        s.d_module.requires_grad_(True)
        return loss_g

    def __call__(self, reals: list[DeviceBatch], ema_step: int | torch.Tensor) -> None:
        kind, s = self.cfg.loss.kind, self.state
        for d_iter, (images, labels) in enumerate(reals):
            d = self.d_update(images, labels, ema_step, keep_fake_graph=d_iter == len(reals) - 1)
        loss_g = self.g_update(d, ema_step)
        s.ema.update(s.g_module, ema_step)
        with torch.no_grad():
            stats = torch.stack([d.loss.detach().float(), loss_g.detach().float(),
                                 d_confidence(kind, d.real_logits), d_confidence(kind, d.fake_logits),
                                 fooled_rate(kind, d.real_logits, d.fake_logits), real_sign(kind, d.real_logits)])
            bad = (~torch.isfinite(stats[:2])).any().float()
            self.bad_total.add_(bad)
            self.bad_run.add_(bad).mul_(bad)
            self.stat_sums.add_(torch.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0))
