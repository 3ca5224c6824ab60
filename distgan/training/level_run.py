"""Training LAPGAN's levels: each level a conditional GAN of its own, with its own data stream, optimisers,
checkpoints and resume (files: `distgan/pyramid_run.py`), so that ranks (`levels.py`) or separate jobs
train different levels at once.

Everything a level's step draws is a pure function of (seed, level, rank within the level, step): the
latents and the dropout masks from a seed derived from them, the real batch from the loader position saved
with the checkpoint. A level resumed from step N is therefore bitwise the level trained in one go.

As in the main trainer, each level keeps an EMA of its G (`optim.ema_decay`): what the pyramid exports and
samples. Stop requests are the main trainer's (`signals.py`, STOP files, `Markers`), shared over the ranks by
`ddp.Control` every `train.sync_every` rounds (a round: one step of each of a rank's unfinished levels); on a
stop every level checkpoints at the step it has reached. What one rank alone learns (a level it cannot load,
a data error, a failed checkpoint write, its level LOCK taken over) goes over the same channel, so every rank
stops with the same error. Launches may share the run directory (a SLURM array job: a task per level), so
the markers are per level as well, and each level has one writer:

    runs/NAME/STOP                      stops every launch of the run
    runs/NAME/levels/level-K/STOP       stops the launch that trains level K
    runs/NAME/levels/level-K/STOPPED    level K's launch stopped, its checkpoint written (or COMPLETED: done)
    runs/NAME/levels/level-K/LOCK       the launch training level K now (its first rank; `run_lock.py`)
    runs/NAME/STOPPED, COMPLETED        the same for a launch that trains every level (`train.levels: all`)
"""

from __future__ import annotations

import contextlib
import dataclasses
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

import distgan
from distgan.config import Config, ConfigError, config_hash
from distgan.data import DataError, ShardLoader
from distgan.data.loader import read_manifest, to_device
from distgan.ddp import Control, is_lost_peer
from distgan.ema import EMA
from distgan.losses import discriminator_loss, generator_loss
from distgan.models.lapgan import (FAMILY, LapganSpec, build_level_discriminator, build_level_generator,
                                   discriminator_input, level_real)
from distgan.pyramid_run import (EMA_FILE, LEVELS_DIR, STEP_PREFIX, check_spec, level_checkpoints, level_dir,
                                  write_spec)
from distgan.training.errors import TrainingError
from distgan.training.launcher_watch import watch_launcher
from distgan.training.level_monitor import LevelMonitor
from distgan.training.levels import assign_ranks, level_groups, owned_levels, parse_levels
from distgan.training.markers import Markers
from distgan.training.run_lock import RunLock
from distgan.training.session import resolve_precision
from distgan.training.signals import StopNow, StopSignals

log = logging.getLogger("distgan")

LOSS_KINDS = ("bce", "hinge", "lsgan")  # wgan-gp's penalty is not wired into the level step
PRECISIONS = ("no", "bf16")  # fp16 would need a loss scaler in the level step; bf16 does not


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

    def __init__(self, cfg: Config, spec: LapganSpec, place: LevelPlace, device: torch.device,
                 defer_errors: bool = False):
        """`defer_errors`: a data error is kept in `loader.error` (stand-in batches meanwhile) for the run's next
        sync to share, so that this rank still meets its peers' collectives; else it is raised at once."""
        self.cfg, self.spec, self.place, self.device = cfg, spec, place, device
        self.level = place.level
        torch.manual_seed(step_seed(cfg.seed, self.level, 0, -1))  # the same init on every rank of the level
        self.g_module = build_level_generator(spec, self.level).to(device)
        self.d_module = build_level_discriminator(spec, self.level).to(device)
        self.ema = EMA(self.g_module, cfg.optim.ema_decay)  # the level's exported weights, as the main trainer's
        bf16 = cfg.train.mixed_precision == "bf16"
        # Forwards and losses in bf16 where autocast says so; weights, Adam and the EMA stay fp32.
        self.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        if place.group is not None:
            self.G = DistributedDataParallel(self.g_module, process_group=place.group)
            self.D = DistributedDataParallel(self.d_module, process_group=place.group)
        else:
            self.G, self.D = self.g_module, self.d_module
        o = cfg.optim
        self.opt_g = torch.optim.Adam(self.g_module.parameters(), lr=o.g_lr, betas=tuple(o.g_betas))
        self.opt_d = torch.optim.Adam(self.d_module.parameters(), lr=o.d_lr, betas=tuple(o.d_betas))
        self.step = self.epoch = self.batch = 0
        self.saved_step = 0  # the step of the newest checkpoint (a stop writes one unless it is this step)
        self.loader = ShardLoader(cfg.data.path, cfg.data.split, cfg.data.batch_size, rank=place.index,
                                  world_size=len(place.ranks), seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                                  num_workers=cfg.data.num_workers, on_corrupt=cfg.data.on_corrupt,
                                  shards=cfg.data.shards, control=Control(1), defer_errors=defer_errors)
        self._batches = None
        self.save_error: str | None = None  # a failed checkpoint write, for the next sync to share
        self.last_images: torch.Tensor | None = None

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
        self.ema.update(self.g_module, self.step)
        self.step += 1
        return {"d_loss": d_loss, "g_loss": g_loss}

    def _d_update(self, target, condition, labels, z) -> float:
        with torch.no_grad(), self.autocast():
            fake = self.g_module(z, condition, labels)
            self.last_images = discriminator_input(fake, condition)  # what D judged: the level's image
        with self.autocast():
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
            with self.autocast():
                fake = self.G(z, condition, labels)
                loss = generator_loss(self.cfg.loss.kind, self.d_module(discriminator_input(fake, condition),
                                                                        condition, labels))
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
        self.saved_step = self.step
        if self.place.index != 0:
            return None
        tmp = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.g_module.state_dict().items()},
                  str(tmp / "generator.safetensors"))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.d_module.state_dict().items()},
                  str(tmp / "discriminator.safetensors"))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.ema.module.state_dict().items()},
                  str(tmp / EMA_FILE))
        torch.save({"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({"level": self.level, "step": self.step, "epoch": self.epoch,
                                                    "batch": self.batch, "spec": self.spec.to_dict()}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self._prune(run_path)
        return final

    def data_failed(self) -> bool:
        """Whether any rank of this level holds a data error (its steps since ran on stand-in batches)."""
        failed = torch.tensor([int(self.loader.error is not None)], device=self.device)
        if self.place.group is not None:
            dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=self.place.group)
        return bool(failed.item())

    def _prune(self, run_path: Path) -> None:
        for old in level_checkpoints(run_path, self.level)[:-max(1, self.cfg.train.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, checkpoint: Path) -> None:
        """Continue from `checkpoint` exactly: weights, buffers, the EMA, both Adams, the loader position, the
        step."""
        state = json.loads((checkpoint / "state.json").read_text())
        if state["spec"] != self.spec.to_dict() or state["level"] != self.level:
            raise TrainingError(f"{checkpoint}: a checkpoint of another pyramid or level (spec {state['spec']}); "
                                f"resume with the run's own model settings", every_rank=False)
        if not (checkpoint / EMA_FILE).is_file():
            raise TrainingError(f"{checkpoint / EMA_FILE}: missing (a checkpoint written before level EMAs): this "
                                f"level cannot resume exactly; train it anew into another run name",
                                every_rank=False)
        self.g_module.load_state_dict(load_file(str(checkpoint / "generator.safetensors"), device=str(self.device)))
        self.d_module.load_state_dict(load_file(str(checkpoint / "discriminator.safetensors"), device=str(self.device)))
        self.ema.module.load_state_dict(load_file(str(checkpoint / EMA_FILE), device=str(self.device)))
        optim = torch.load(checkpoint / "optim.pt", map_location=self.device, weights_only=True)
        self.opt_g.load_state_dict(optim["g"])
        self.opt_d.load_state_dict(optim["d"])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.saved_step = self.step
        self._batches = None


def _device() -> torch.device:
    """This process's GPU (LOCAL_RANK), or the CPU where there is none or the launcher says ACCELERATE_USE_CPU."""
    if not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def train_levels(cfg: Config, spec: LapganSpec, levels: object,
                 info: dict[str, Any]) -> tuple[list[LevelTrainer], str]:
    """Train this rank's share of `levels` (`train.levels`) for cfg.train.steps steps each, resuming each level
    from its newest checkpoint; returns this rank's level trainers and how the run ended, 'completed' or
    'stopped' (a stop request: every level checkpointed where it was, then its marker written).

    Whatever fails on one rank (a level's LOCK held by another start, a checkpoint it cannot load, its data, a
    checkpoint write) is shared with every rank through `Control`, which all raise the same TrainingError
    (rank 0 reports it); a rank that vanished is named."""
    if cfg.loss.kind not in LOSS_KINDS:
        raise ValueError(f"loss.kind {cfg.loss.kind!r} is not supported by lapgan; valid: {', '.join(LOSS_KINDS)}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    control = Control(world)  # before the level groups: every rank creates the groups in the same order
    assignment = assign_ranks(parse_levels(levels, spec.levels), world)
    groups = level_groups(assignment, rank) if distributed else {k: None for k in assignment}
    run_path = Path(cfg.run_dir) / cfg.name
    places = [LevelPlace(k, assignment[k], assignment[k].index(rank), groups[k])
              for k in owned_levels(assignment, rank)]
    # Each level's first rank holds the level's LOCK: one writer per level directory (run_lock.py's rules).
    locks = {p.level: RunLock(level_dir(run_path, p.level)) for p in places if p.index == 0}
    held: list[RunLock] = []
    try:
        error = None
        for lock in locks.values():
            try:
                lock.acquire(cfg.train.force_unlock)
                held.append(lock)
            except TrainingError as exc:
                error = error or str(exc)
        _agree(control, error)  # refused: before anything is written
        return _train_holding_locks(cfg, spec, info, control, places, locks, run_path, rank,
                                    whole=len(assignment) == spec.levels)
    finally:
        for lock in held:
            lock.release()


def _agree(control: Control, error: str | None) -> None:
    """Every rank learns whether any rank failed; if one did, every rank raises the same TrainingError."""
    failed = control.failures(error)
    if failed is not None:
        raise TrainingError(failed if control.active else str(error))


def _train_holding_locks(cfg: Config, spec: LapganSpec, info: dict[str, Any], control: Control,
                         places: list[LevelPlace], locks: dict[int, RunLock], run_path: Path, rank: int,
                         whole: bool) -> tuple[list[LevelTrainer], str]:
    """Set up this rank's levels (one agreement on every rank's errors), train them, then write the markers
    once every rank knows that every level's last checkpoint is on disk."""
    device, error, trainers = _device(), None, []
    for place in places:  # every level built, even after an error: their DDP constructors meet the peers'
        try:
            trainers.append(LevelTrainer(cfg, spec, place, device, defer_errors=control.active))
        except (DataError, TrainingError) as exc:
            error = error or str(exc)
        except Exception as exc:  # noqa: BLE001  shared rather than leaving the peers waiting
            error = error or f"level {place.level}: {type(exc).__name__}: {exc}"
    run_markers = Markers(run_path, rank == 0)  # runs/NAME/STOP stops every launch of the run
    level_markers = [Markers(level_dir(run_path, t.level), t.place.index == 0) for t in trainers]
    markers = level_markers + ([run_markers] if whole else [])  # a launch of every level: the run's are its own
    if error is None:
        try:
            if rank == 0:
                write_spec(run_path, spec, info)
            for directory in markers:
                if directory.is_main:
                    directory.path.mkdir(parents=True, exist_ok=True)
                    directory.clear_markers()
            for trainer in trainers:
                found = level_checkpoints(run_path, trainer.level)
                if found and cfg.train.resume == "auto":
                    trainer.load(found[-1])
        except (ConfigError, TrainingError) as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001  e.g. a checkpoint file that does not load: shared, named
            error = f"{type(exc).__name__}: {exc}"
    _agree(control, error)
    monitors = {t.level: LevelMonitor(cfg, run_path, t.level, t.step) for t in trainers if t.place.index == 0}
    signals = StopSignals()
    try:
        status = _run(cfg, trainers, monitors, run_path, control, [run_markers, *level_markers],
                      [locks[t.level] for t in trainers if t.level in locks], signals)
        _agree(control, next((t.save_error for t in trainers if t.save_error), None))  # every checkpoint on disk
    except TrainingError:
        raise
    except RuntimeError as exc:  # a peer died: name it, rather than wait for a collective's timeout
        if not (control.active and is_lost_peer(exc)):
            raise
        if signals.stopped_now:  # this rank's own StopNow was lost (see signals.py); the peer stopped at once too
            raise StopNow("second Ctrl-C: stopped at once, without a checkpoint") from exc
        steps = ", ".join(f"level {t.level} at step {t.step}" for t in trainers)
        raise TrainingError(f"lost contact with {control.lost_ranks()} ({steps}; {str(exc).splitlines()[0][:160]}); "
                            f"resume from the last checkpoints with train.resume=auto", every_rank=False) from exc
    finally:
        for monitor in monitors.values():
            monitor.close()
    for directory, trainer in zip(level_markers, trainers):  # a level's own outcome, whatever stopped the others
        (directory.mark_completed if trainer.step >= cfg.train.steps else directory.mark_stopped)(trainer.step)
    if whole:  # the run's: rank 0's least advanced level
        step = min((t.step for t in trainers), default=0)
        (run_markers.mark_stopped if status == "stopped" else run_markers.mark_completed)(step)
    return trainers, status


def _run(cfg: Config, trainers: list[LevelTrainer], monitors: dict[int, LevelMonitor], run_path: Path,
         control: Control, stop_dirs: list[Markers], locks: list[RunLock], signals: StopSignals) -> str:
    """Every level of this rank to train.steps, one step of each in turn (a round); logs and checkpoints on
    cadence. Every `train.sync_every` rounds the ranks share stop requests (a signal, a STOP file in one of
    `stop_dirs`), whether any level is unfinished, and any rank's error (data, a checkpoint write, a level LOCK
    taken over): every rank runs the same rounds (one done early idles through them), so the collectives always
    meet, and an error stops every rank at the same sync."""
    t = cfg.train
    stop = unfinished = False
    with signals:
        rounds = 0
        while True:
            signals.raise_if_stopped_now()
            if rounds % t.sync_every == 0:
                error = _pending_error(trainers, locks)
                stop, unfinished, failed = control.flags(any(d.stop_wanted(signals) for d in stop_dirs),
                                                         any(trainer.step < t.steps for trainer in trainers),
                                                         error is not None)
                if failed:
                    where = ", ".join(f"level {tr.level} at step {tr.step}" for tr in trainers)
                    raise TrainingError(f"stopped ({where}) without a checkpoint: "
                                        f"{'; '.join(control.messages(error)) if control.active else error}")
                if stop or not unfinished:
                    break
            for trainer in trainers:
                if trainer.step < t.steps:
                    _step(cfg, trainer, monitors.get(trainer.level), run_path, signals)
            rounds += 1
        for trainer in trainers:  # a stop: each level checkpoints at the step it reached
            if trainer.step != trainer.saved_step:
                _checkpoint(trainer, monitors.get(trainer.level), run_path, signals)
    status = "stopped" if stop and unfinished else "completed"
    log.info("%s: %s; checkpoints in %s", status, ", ".join(f"level {t.level} at step {t.step}" for t in trainers),
             run_path / LEVELS_DIR)
    return status


def _pending_error(trainers: list[LevelTrainer], locks: list[RunLock]) -> str | None:
    """This rank's first error since the last sync: a level LOCK taken over, a data error, a failed write."""
    for lock in locks:
        if lock.lost is not None:
            return lock.lost
    for trainer in trainers:
        if trainer.loader.error is not None:
            return f"level {trainer.level}: {trainer.loader.error}"
        if trainer.save_error is not None:
            return trainer.save_error
    return None


def _step(cfg: Config, trainer: LevelTrainer, monitor: LevelMonitor | None, run_path: Path,
          signals: StopSignals) -> None:
    """One step of one level; its log line and checkpoint when due."""
    t = cfg.train
    losses = trainer.train_step()
    if monitor is not None and trainer.step % t.log_every == 0:
        log.info("level %d step %d: d_loss %.4f g_loss %.4f", trainer.level, trainer.step,
                 losses["d_loss"], losses["g_loss"])
        monitor.log(trainer.step, {"loss/d": losses["d_loss"], "loss/g": losses["g_loss"]})
    if trainer.step % t.checkpoint_every == 0 or trainer.step == t.steps:
        _checkpoint(trainer, monitor, run_path, signals)


def _checkpoint(trainer: LevelTrainer, monitor: LevelMonitor | None, run_path: Path, signals: StopSignals) -> None:
    """The level's checkpoint, unless a rank of the level trained on stand-in batches (a data error: the next
    sync stops the run with it). A failed write is kept for the next sync (or the stop's agreement)."""
    if trainer.data_failed():
        return
    with signals.critical():  # a second Ctrl-C waits for the write: never a half-written checkpoint
        try:
            trainer.save(run_path)
        except Exception as exc:  # noqa: BLE001  a full disk, a lost mount (safetensors and torch wrap OSError)
            trainer.save_error = trainer.save_error or (
                f"writing level {trainer.level}'s checkpoint at step {trainer.step} into "
                f"{level_dir(run_path, trainer.level)} failed ({type(exc).__name__}: {exc}); the previous one is "
                f"intact: free space and resume with train.resume=auto")
            return
    if monitor is not None and trainer.last_images is not None:
        monitor.images(trainer.step, trainer.last_images)


# What the level step implements; anything else is refused at start with its key named.
UNSUPPORTED = {  # key -> (value that means "off", why)
    "loss.d_steps": (1, "one D update per step"), "loss.r1_gamma": (0.0, "no R1 penalty"),
    "aug.policy": ("", "no augmentation"), "model.spectral_norm": (False, "no spectral norm"),
    "model.sync_bn": (False, "BatchNorm per rank"), "train.compile": (False, "eager"),
    "optim.schedule": ("constant", "a constant lr"), "optim.grad_clip": (0.0, "no clipping"),
    "optim.lr_scaling": ("none", "the lr as given"), "eval.every": (0, "no evaluation during training"),
}
TRACKERS = ("none", "wandb")


def spec_from_config(cfg: Config, shape: tuple[int, int, int], num_classes: int) -> LapganSpec:
    """The pyramid the config and data describe; ConfigError naming the key for what lapgan cannot do."""
    for key, (off, what) in UNSUPPORTED.items():
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) != off:
            raise ConfigError(f"config key {key!r} is not supported by model.arch lapgan (it trains with {what}); "
                              f"remove it or set it to {off!r}")
    if cfg.log.log_with not in TRACKERS:
        raise ConfigError(f"config key 'log.log_with': {cfg.log.log_with!r} is not supported by model.arch lapgan; "
                          f"valid: {', '.join(TRACKERS)}")
    if cfg.loss.kind not in LOSS_KINDS:
        raise ConfigError(f"config key 'loss.kind': {cfg.loss.kind!r} is not supported by model.arch lapgan; "
                          f"valid: {', '.join(LOSS_KINDS)}")
    if cfg.train.mixed_precision not in PRECISIONS:
        raise ConfigError(f"config key 'train.mixed_precision': {cfg.train.mixed_precision!r} is not supported by "
                          f"model.arch lapgan (its level step has no loss scaler); valid: {', '.join(PRECISIONS)}")
    for key in ("nz", "ngf", "ndf"):
        if getattr(cfg.model, key) < 1:
            raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(cfg.model, key)}")
    if not 0.0 <= cfg.model.d_dropout < 1.0:
        raise ConfigError(f"config key 'model.d_dropout' must be in [0, 1), got {cfg.model.d_dropout}")
    if cfg.model.conditional and num_classes < 2:
        raise ConfigError(f"config key 'model.conditional': {cfg.data.path} has no class labels")
    try:
        spec = FAMILY.make_generator_spec(cfg.model, shape, num_classes)
        parse_levels(cfg.train.levels, spec.levels)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return spec


def _start_processes() -> None:
    """Join the launcher's process group (gloo on CPUs, NCCL on GPUs) when there is more than one process."""
    device = _device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo" if device.type == "cpu" else "nccl")
    watch_launcher()  # no orphan ranks: a rank whose launcher died stops, with a checkpoint (launcher_watch.py)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(message)s")


def train_lapgan(cfg: Config) -> str:
    """`distgan-train` for model.arch lapgan: this launch's share of `train.levels`, into runs/NAME/levels/;
    returns 'completed' or 'stopped' (as the main trainer: both exit 0, the marker tells them apart)."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(  # null: the launcher's precision, as the main trainer
        cfg.train, mixed_precision=resolve_precision(cfg.train.mixed_precision)))
    manifest = read_manifest(cfg.data.path)
    num_classes = manifest.num_classes if cfg.model.conditional else 0
    spec = spec_from_config(cfg, (manifest.channels, manifest.height, manifest.width), num_classes)
    info = {"dataset": manifest.name, "classes": manifest.classes if num_classes else [],
            "distgan_version": distgan.__version__, "config_hash": config_hash(cfg)}
    check_spec(Path(cfg.run_dir) / cfg.name, spec)  # every rank, before any process or level starts
    _start_processes()
    try:
        trainers, status = train_levels(cfg, spec, cfg.train.levels, info)
        if status == "completed":
            log.info("%s: level(s) %s at step %d; export the pyramid with distgan-export --onnx %s", cfg.name,
                     ", ".join(str(t.level) for t in trainers), cfg.train.steps, Path(cfg.run_dir) / cfg.name)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return status
