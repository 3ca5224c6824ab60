"""Training LAPGAN's levels: each level a conditional GAN of its own, with its own data stream, optimisers,
checkpoints and resume, so that ranks (`levels.py`) or separate jobs train different levels at once.

    runs/NAME/levels/lapgan.json                    the pyramid's spec + run info (what export reads)
    runs/NAME/levels/level-K/step-0000100/          G and D (safetensors), both Adams (optim.pt), state.json

Everything a level's step draws is a pure function of (seed, level, rank within the level, step): the
latents and the dropout masks from a seed derived from them, the real batch from the loader position saved
with the checkpoint. A level resumed from step N is therefore bitwise the level trained in one go.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from distgan.config import Config
from distgan.data import ShardLoader
from distgan.data.loader import to_device
from distgan.ddp import Control
from distgan.losses import discriminator_loss, generator_loss
from distgan.models.lapgan import (LapganSpec, LaplacianGenerator, build_level_discriminator, build_level_generator,
                                   discriminator_input, lapgan_from_spec, level_real)
from distgan.training.levels import assign_ranks, level_groups, owned_levels, parse_levels

log = logging.getLogger("distgan")

LEVELS_DIR = "levels"
SPEC_FILE = "lapgan.json"
STEP_PREFIX = "step-"
LOSS_KINDS = ("bce", "hinge", "lsgan")  # wgan-gp's penalty is not wired into the level step


def level_dir(run_path: Path, level: int) -> Path:
    return run_path / LEVELS_DIR / f"level-{level}"


def level_checkpoints(run_path: Path, level: int) -> list[Path]:
    """A level's complete checkpoints, oldest first (staging directories never listed)."""
    root = level_dir(run_path, level)
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def step_seed(seed: int, level: int, index: int, step: int) -> int:
    """The seed of one step (-1: the init) of one rank of one level: distinct streams, nothing carried over."""
    return int(np.random.SeedSequence([seed, level, index, step + 1]).generate_state(1)[0])


@dataclass
class LevelPlace:
    """Where a level runs: its ranks, this rank's index among them, and their process group (None: alone)."""

    level: int
    ranks: tuple[int, ...]
    index: int
    group: Any = None


class LevelTrainer:
    """One level's GAN on this rank: G_k, D_k (DDP over the level's ranks), both Adams, its loader and step."""

    def __init__(self, cfg: Config, spec: LapganSpec, place: LevelPlace, device: torch.device):
        self.cfg, self.spec, self.place, self.device = cfg, spec, place, device
        self.level = place.level
        torch.manual_seed(step_seed(cfg.seed, self.level, 0, -1))  # the same init on every rank of the level
        self.g_module = build_level_generator(spec, self.level).to(device)
        self.d_module = build_level_discriminator(spec, self.level).to(device)
        if place.group is not None:
            self.G = DistributedDataParallel(self.g_module, process_group=place.group)
            self.D = DistributedDataParallel(self.d_module, process_group=place.group)
        else:
            self.G, self.D = self.g_module, self.d_module
        o = cfg.optim
        self.opt_g = torch.optim.Adam(self.g_module.parameters(), lr=o.g_lr, betas=tuple(o.g_betas))
        self.opt_d = torch.optim.Adam(self.d_module.parameters(), lr=o.d_lr, betas=tuple(o.d_betas))
        self.step = self.epoch = self.batch = 0
        self.loader = ShardLoader(cfg.data.path, cfg.data.split, cfg.data.batch_size, rank=place.index,
                                  world_size=len(place.ranks), seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                                  num_workers=cfg.data.num_workers, on_corrupt=cfg.data.on_corrupt,
                                  shards=cfg.data.shards, control=Control(1))
        self._batches = None

    def train_step(self) -> dict[str, float]:
        """One D update and one G update of this level; returns both losses."""
        if self._batches is None:
            self._batches = self.loader.endless(self.epoch, self.batch)
        self.epoch, self.batch, batch = next(self._batches)
        seed = step_seed(self.cfg.seed, self.level, self.place.index, self.step)
        torch.manual_seed(seed)  # dropout masks
        real = to_device(batch.images, self.device)
        labels = batch.labels.to(self.device) if self.spec.conditional else None
        target, condition = level_real(real, self.level, self.spec.levels)
        z = torch.randn(len(real), self.spec.level_nz(self.level), generator=torch.Generator().manual_seed(seed))
        z = z.to(self.device)
        d_loss = self._d_update(target, condition, labels, z)
        g_loss = self._g_update(condition, labels, z)
        self.step += 1
        return {"d_loss": d_loss, "g_loss": g_loss}

    def _d_update(self, target, condition, labels, z) -> float:
        with torch.no_grad():
            fake = self.g_module(z, condition, labels)
        both = torch.cat([discriminator_input(target, condition), discriminator_input(fake, condition)])
        twice = (lambda t: None if t is None else torch.cat([t, t]))
        logits = self.D(both, twice(condition), twice(labels))  # one DDP forward for real and fake
        real_logits, fake_logits = logits.chunk(2)
        loss = discriminator_loss(self.cfg.loss.kind, real_logits, fake_logits, self.cfg.loss.real_label)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.item()

    def _g_update(self, condition, labels, z) -> float:
        self.d_module.requires_grad_(False)  # D frozen and unwrapped: no D gradient, no D all-reduce
        try:
            fake = self.G(z, condition, labels)
            loss = generator_loss(self.cfg.loss.kind, self.d_module(discriminator_input(fake, condition), condition,
                                                                    labels))
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
        finally:
            self.d_module.requires_grad_(True)
        return loss.item()

    # --- checkpoints ------------------------------------------------------------------------------

    def save(self, run_path: Path) -> Path | None:
        """Write this level's checkpoint (the level's first rank; the others hold the same weights)."""
        final = level_dir(run_path, self.level) / f"{STEP_PREFIX}{self.step:07d}"
        if self.place.index != 0:
            return None
        tmp = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.g_module.state_dict().items()},
                  str(tmp / "generator.safetensors"))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.d_module.state_dict().items()},
                  str(tmp / "discriminator.safetensors"))
        torch.save({"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({"level": self.level, "step": self.step, "epoch": self.epoch,
                                                    "batch": self.batch, "spec": self.spec.to_dict()}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self._prune(run_path)
        return final

    def _prune(self, run_path: Path) -> None:
        for old in level_checkpoints(run_path, self.level)[:-max(1, self.cfg.train.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, checkpoint: Path) -> None:
        """Continue from `checkpoint` exactly: weights, buffers, both Adams, the loader position, the step."""
        state = json.loads((checkpoint / "state.json").read_text())
        if state["spec"] != self.spec.to_dict() or state["level"] != self.level:
            raise ValueError(f"{checkpoint}: a checkpoint of another pyramid or level (spec {state['spec']}); "
                             f"resume with the run's own model settings")
        self.g_module.load_state_dict(load_file(str(checkpoint / "generator.safetensors"), device=str(self.device)))
        self.d_module.load_state_dict(load_file(str(checkpoint / "discriminator.safetensors"), device=str(self.device)))
        optim = torch.load(checkpoint / "optim.pt", map_location=self.device, weights_only=True)
        self.opt_g.load_state_dict(optim["g"])
        self.opt_d.load_state_dict(optim["d"])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self._batches = None


def write_spec(run_path: Path, spec: LapganSpec, info: dict[str, Any]) -> None:
    """The pyramid's spec and run info, atomically (every job of an array job writes the same file)."""
    path = run_path / LEVELS_DIR / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        known = json.loads(path.read_text())["spec"]
        if known != spec.to_dict():
            raise ValueError(f"{path}: this run's pyramid is {known}; the config builds {spec.to_dict()}")
    tmp = path.with_name(f".{SPEC_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"spec": spec.to_dict(), **info}, indent=2))
    os.replace(tmp, path)


def assemble_generator(run_path: Path) -> tuple[LaplacianGenerator, dict[str, Any]]:
    """The whole pyramid from each level's newest checkpoint (eval mode), and the run info with `step` the
    smallest level step; a level without a checkpoint is named."""
    info = json.loads((run_path / LEVELS_DIR / SPEC_FILE).read_text())
    generator = lapgan_from_spec(info["spec"])
    steps = []
    for level in range(generator.spec.levels):
        found = level_checkpoints(run_path, level)
        if not found:
            raise FileNotFoundError(f"{level_dir(run_path, level)}: level {level} has no checkpoint yet; "
                                    f"train it (train.levels: [{level}]) before sampling the pyramid")
        generator.generators[level].load_state_dict(load_file(str(found[-1] / "generator.safetensors")))
        steps.append(json.loads((found[-1] / "state.json").read_text())["step"])
    return generator.eval(), {**{k: v for k, v in info.items() if k != "spec"}, "step": min(steps)}


def train_levels(cfg: Config, spec: LapganSpec, levels: object, info: dict[str, Any]) -> list[LevelTrainer]:
    """Train this rank's share of `levels` (`train.levels`) for cfg.train.steps steps each, resuming each level
    from its newest checkpoint; returns this rank's level trainers, done."""
    if cfg.loss.kind not in LOSS_KINDS:
        raise ValueError(f"loss.kind {cfg.loss.kind!r} is not supported by lapgan; valid: {', '.join(LOSS_KINDS)}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    assignment = assign_ranks(parse_levels(levels, spec.levels), world)
    groups = level_groups(assignment, rank) if distributed else {k: None for k in assignment}
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    run_path = Path(cfg.run_dir) / cfg.name
    if rank == 0:
        write_spec(run_path, spec, info)
    trainers = [LevelTrainer(cfg, spec, LevelPlace(k, assignment[k], assignment[k].index(rank), groups[k]), device)
                for k in owned_levels(assignment, rank)]
    for trainer in trainers:
        found = level_checkpoints(run_path, trainer.level)
        if found and cfg.train.resume == "auto":
            trainer.load(found[-1])
    t = cfg.train
    while any(trainer.step < t.steps for trainer in trainers):
        for trainer in trainers:
            if trainer.step >= t.steps:
                continue
            losses = trainer.train_step()
            if trainer.place.index == 0 and trainer.step % t.log_every == 0:
                log.info("level %d step %d: d_loss %.4f g_loss %.4f", trainer.level, trainer.step,
                         losses["d_loss"], losses["g_loss"])
            if trainer.step % t.checkpoint_every == 0 or trainer.step == t.steps:
                trainer.save(run_path)
    return trainers
