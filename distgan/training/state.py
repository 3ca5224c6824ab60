"""The run's state: both networks (wrapped for the step, raw for saving), the EMA, both optimisers, the
loss scaler and the progress. `distgan/training/checkpoint.py` saves and loads exactly this."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from distgan.ada import AdaptiveP
from distgan.config import Config
from distgan.ddp import GlobalBatchNorm
from distgan.ema import EMA
from distgan.models import Family, LossTerms, get_family
from distgan.schedule import LRSchedule, lr_scheduler


@dataclass
class Progress:
    """Where the run is: G updates done, and the loader position (epoch, batches done in it) to resume at."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass
class TrainState:
    G: nn.Module  # as the step calls it: DDP-wrapped (and compiled) where asked
    D: nn.Module
    g_module: nn.Module  # the raw modules: saved, averaged, checked across ranks
    d_module: nn.Module
    d_for_g: nn.Module  # D as the G step calls it: unwrapped, so no D gradient is all-reduced there
    ema: EMA
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    base_lrs: tuple[float, float]  # the config's rates after lr_scaling, which a schedule scales
    family: Family  # what G takes, its extra loss terms, its export (distgan/models/family.py)
    loss_terms: LossTerms | None = None  # the family's extra loss terms and their state (checkpointed)
    augment_p: AdaptiveP | None = None  # the augmentation probability (fixed or adaptive); None: no augmentation
    progress: Progress = field(default_factory=Progress)
    schedulers: list[LambdaLR] = field(default_factory=list)  # none for a constant rate

    def start_schedules(self, cfg: Config) -> None:
        """The lr schedules at the current step (a pure function of it: a resume continues them exactly)."""
        if cfg.optim.schedule == "constant":
            return
        schedule = LRSchedule(cfg.optim.schedule, cfg.train.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        self.schedulers = [lr_scheduler(opt, schedule, [base], start_step=self.progress.step)
                           for opt, base in zip((self.opt_g, self.opt_d), self.base_lrs)]

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}


def build_state(cfg: Config, accelerator: Accelerator, shape: tuple[int, int, int], num_classes: int,
                capturable: bool) -> TrainState:
    """The networks, optimisers and scaler of a fresh run (a resume then loads into them).

    `capturable`: Adam keeps its step counter (and a scheduled lr) on the device, where a CUDA graph
    can update it.
    """
    device, world = accelerator.device, accelerator.num_processes
    family = get_family(cfg.model.arch)
    G = family.build_generator(family.make_generator_spec(cfg.model, shape, num_classes))
    D = family.build_discriminator(family.make_discriminator_spec(cfg.model, shape, num_classes))
    loss_terms = family.loss_terms(cfg, G.spec, D.spec)
    if loss_terms is not None:
        loss_terms.to(device)
    if cfg.model.sync_bn and world > 1:  # batch statistics of the global batch, whatever the world size
        G, D = GlobalBatchNorm.convert(G), GlobalBatchNorm.convert(D)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    lr_scale = {"none": 1.0, "linear": float(world), "sqrt": math.sqrt(world)}[cfg.optim.lr_scaling]
    adam = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    if capturable:
        adam["capturable"] = True
    base_lrs = (cfg.optim.g_lr * lr_scale, cfg.optim.d_lr * lr_scale)
    g_lr, d_lr = base_lrs
    if capturable and cfg.optim.schedule != "constant":  # a replayed graph reads the lr the scheduler fills in
        g_lr, d_lr = (torch.tensor(lr, device=device) for lr in base_lrs)
    opt_g = torch.optim.Adam(G.parameters(), lr=g_lr, betas=tuple(cfg.optim.g_betas), **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=d_lr, betas=tuple(cfg.optim.d_betas), **adam)
    G, D = accelerator.prepare(G, D)
    g_module, d_module = accelerator.unwrap_model(G), accelerator.unwrap_model(D)
    ema = EMA(g_module, cfg.optim.ema_decay)
    d_for_g = d_module
    if cfg.train.compile:
        mode = None if cfg.train.compile_mode == "default" else cfg.train.compile_mode
        G, D, d_for_g = (torch.compile(m, mode=mode) for m in (G, D, d_module))
    fp16 = cfg.train.mixed_precision == "fp16"
    # In bf16/fp32 the scaler (scale fixed at 1) is the guard that skips a step whose gradients are not
    # finite, on the device, without a host sync.
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16 if fp16 else 1.0)
    augment_p = None
    if cfg.aug.policy.strip():
        augment_p = AdaptiveP(cfg.aug.target, cfg.aug.speed_images, initial_p=cfg.aug.p,
                              threshold=0.5 if cfg.loss.kind == "lsgan" else 0.0).to(device)
    return TrainState(G, D, g_module, d_module, d_for_g, ema, opt_g, opt_d, scaler, base_lrs, family, loss_terms,
                      augment_p)
