"""What the loop does between steps, each on its cadence: sync, log, sample, evaluate, checkpoint.

Every rank takes the same branches (each cadence is a function of the step), so the
collectives inside them always meet.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator

import distgan
from distgan import ddp
from distgan.artifacts import save_generator
from distgan.config import Config, config_hash
from distgan.data import DataError, Manifest, ShardLoader, normalize_images
from distgan.data.loader import shard_urls
from distgan.data.shards import iter_shard_chunks
from distgan.metrics.during_training import TrainingEvaluator
from distgan.models import latent_size
from distgan.monitor import RunMonitor
from distgan.training.checkpoint import save_checkpoint
from distgan.training.errors import TrainingError
from distgan.training.run_dir import RunDirectory
from distgan.training.signals import StopSignals
from distgan.training.state import TrainState
from distgan.training.step import STAT_KEYS, GANStep

log = logging.getLogger("distgan")


def manifest_digest(manifest: Manifest) -> str:
    """Identifies the data a run trains on (the manifest lists every shard's size, count and sha256)."""
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()


def fixed_real_images(cfg: Config, manifest: Manifest, device: torch.device) -> torch.Tensor:
    """The first `log.sample_grid` images of the run's split, float NCHW in [-1, 1]: the fixed inputs of the
    sample grids of a family whose G takes an image (the same on every rank and after a resume)."""
    url = shard_urls(cfg.data.path, manifest, cfg.data.split, cfg.data.shards)[0]
    shard = manifest.split(cfg.data.split).shards[0]
    images = next(iter_shard_chunks(url, manifest, shard, check=range(1))).images[: cfg.log.sample_grid]
    return normalize_images(torch.from_numpy(images.copy()).to(device))


class RunActions:
    def __init__(self, cfg: Config, accelerator: Accelerator, control: ddp.Control, run_dir: RunDirectory,
                 state: TrainState, step: GANStep, loader: ShardLoader, monitor: RunMonitor,
                 evaluator: TrainingEvaluator, num_classes: int):
        self.cfg, self.accelerator, self.control, self.run_dir = cfg, accelerator, control, run_dir
        self.state, self.step, self.loader, self.monitor, self.evaluator = state, step, loader, monitor, evaluator
        device, manifest = accelerator.device, loader.manifest
        fixed = torch.Generator().manual_seed(cfg.seed)
        self.fixed_z = torch.randn(cfg.log.sample_grid, latent_size(state.g_module), generator=fixed).to(device)
        self.fixed_labels = (torch.arange(cfg.log.sample_grid) % num_classes).to(device) if num_classes else None
        takes_image = any(i.draw == "image" for i in state.family.inputs(state.g_module.spec))
        self.fixed_real = fixed_real_images(cfg, manifest, device) if takes_image else None
        self.generator_info = {"dataset": manifest.name, "classes": manifest.classes if num_classes else [],
                               "image_shape": [manifest.channels, manifest.height, manifest.width], "config_hash": config_hash(cfg),
                               "distgan_version": distgan.__version__}
        self.data_digest = manifest_digest(manifest)  # recorded with every checkpoint
        self.last_saved = state.progress.step
        self.since_log, self.t_log = 0, time.perf_counter()
        self.restored_steps = 0  # steps of the log interval run before a resume (not timed by this start)
        self.paused = 0.0  # seconds of this log interval spent sampling, evaluating, checkpointing: not steps

    def due(self, every: int, step: int) -> bool:
        return step % every == 0 or step == self.cfg.train.steps

    def sync(self, step: int, signals: StopSignals) -> bool:
        """The run's one host collective on its cadence: stop requests and data errors of every rank.
        True: stop here. A data error on any rank stops every rank, with the file named."""
        stop, data_failed, lock_lost = self.control.flags(self.run_dir.stop_wanted(signals),
                                                          self.loader.error is not None,
                                                          self.run_dir.lock_lost is not None)
        if lock_lost:  # another start writes here now: this one must not write a checkpoint over its files
            raise TrainingError(f"{self.run_dir.lock_lost or 'rank 0 lost the run directory'}; stopped at step "
                                f"{step} without a checkpoint")
        if data_failed:
            own = self.loader.error
            failed = "; ".join(self.control.messages(None if own is None else str(own)))
            if own is not None:
                own.every_rank = False  # its rank reports it (a launcher may end the other ranks first)
                raise own
            raise DataError(f"stopping: data error on another rank ({failed})")
        return stop

    def log(self, step: int) -> None:
        cfg, s, world = self.cfg, self.state, self.accelerator.num_processes
        means = (self.accelerator.reduce(self.step.stat_sums, "mean") / self.since_log).tolist()
        # A non-finite loss on one rank skips the step on every rank (gradients are all-reduced):
        # every rank counts it, so all stop together and rank 0 logs it.
        bad_steps, bad_in_a_row = (int(n) for n in self.accelerator.reduce(
            torch.stack([self.step.bad_total, self.step.bad_run]), "max").tolist())
        skipped = int(self.accelerator.reduce(torch.tensor([self.loader.skipped], device=self.accelerator.device),
                                              "sum").item())
        elapsed = time.perf_counter() - self.t_log - self.paused
        values = dict(zip(STAT_KEYS, means))
        if cfg.loss.kind == "wgan-gp":  # a critic's scores have no sign to read
            del values["d/r_t"]
        values.update({
            "epoch": s.progress.epoch,
            "perf/images_per_s": (self.since_log - self.restored_steps) * cfg.loss.d_steps * cfg.data.batch_size * world / elapsed,
            "lr/g": s.opt_g.param_groups[0]["lr"], "lr/d": s.opt_d.param_groups[0]["lr"],
            "train/bad_steps": bad_steps, "data/skipped": skipped,
        })
        if s.augment_p is not None:
            values["aug/p"] = s.augment_p.p.item()
        if self.accelerator.device.type == "cuda":
            values["mem/gpu_gb"] = torch.cuda.max_memory_allocated(self.accelerator.device) / 2**30
        self.monitor.log(step, values)
        if bad_in_a_row >= cfg.train.max_bad_steps:
            raise TrainingError(
                f"{bad_in_a_row} non-finite steps in a row at step {step} (all skipped); stopping. The last "
                f"good checkpoint is intact in {self.run_dir.path / 'checkpoints'}; try a lower learning rate "
                f"or mixed_precision=bf16")
        self.step.stat_sums.zero_()
        self.since_log, self.t_log, self.paused, self.restored_steps = 0, time.perf_counter(), 0.0, 0

    def log_interval(self) -> dict:
        """The log interval under way, every rank's sums: a checkpoint keeps it, so the first line after a resume
        averages the same steps, bit for bit, as an uninterrupted run's (a collective: every rank calls it)."""
        own = torch.cat([self.step.stat_sums, self.step.bad_total[None], self.step.bad_run[None]])
        return {"steps": self.since_log, "sums": self.accelerator.gather(own.float()).tolist()}

    def restore_log_interval(self, saved: dict) -> None:
        """Take up the log interval a checkpoint's state.json holds (same world size only; else start a new one)."""
        interval, world = saved.get("log_interval"), self.accelerator.num_processes
        if not interval or len(interval["sums"]) != world * (len(STAT_KEYS) + 2):
            return
        own = torch.tensor(interval["sums"], dtype=torch.float32).view(world, -1)[self.accelerator.process_index]
        n = len(STAT_KEYS)
        self.step.stat_sums.copy_(own[:n])
        self.step.bad_total.copy_(own[n])
        self.step.bad_run.copy_(own[n + 1])
        self.since_log = self.restored_steps = interval["steps"]

    def adapt_augmentation(self) -> None:
        """ADA: move p by the heuristic of every rank's real logits since the last adjustment (on the device)."""
        stats = self.state.augment_p.stats()
        if self.accelerator.num_processes > 1:
            stats = self.accelerator.reduce(stats, "sum")
        self.state.augment_p.adjust(stats)

    @contextmanager
    def _not_a_step(self) -> Iterator[None]:
        """Time spent here does not count against the images/s of the log interval it falls in."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start

    @torch.no_grad()
    def sample(self, step: int) -> None:
        """The fixed-noise grid from the EMA generator in fp32: the precision of the exported model."""
        with self._not_a_step():
            g = self.state.ema.module.eval()
            self.monitor.samples(step, self.state.family.sample_images(g, self.fixed_z, self.fixed_labels,
                                                                        self.fixed_real))

    def evaluate(self, step: int) -> None:
        with self._not_a_step():
            self.evaluator.run(step, self.state.ema.module, self.monitor, self.generator_info)

    def snapshot(self, step: int, signals: StopSignals) -> Path:
        self.last_saved = step
        s = self.state
        ddp.check_consistent({"G": s.g_module, "D": s.d_module}, self.control)
        info = {"world_size": self.accelerator.num_processes, "config_hash": config_hash(self.cfg),
                "data_manifest": self.data_digest, "loss_kind": self.cfg.loss.kind,
                "skipped_samples": self.loader.skipped, "log_interval": self.log_interval()}
        with signals.critical(), self._not_a_step():
            path = save_checkpoint(self.accelerator, self.control, self.run_dir.path, s, info,
                                   self.cfg.train.keep_checkpoints)
            if self.accelerator.is_main_process:
                save_generator(s.ema.module, self.run_dir.path / "generator", {"step": step, **self.generator_info})
        return path
