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
from distgan.data import DataError, Manifest, ShardLoader
from distgan.metrics.during_training import TrainingEvaluator
from distgan.models import generate, latent_size
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
        self.generator_info = {"dataset": manifest.name, "classes": manifest.classes if num_classes else [],
                               "image_shape": [manifest.channels, manifest.height, manifest.width], "config_hash": config_hash(cfg),
                               "distgan_version": distgan.__version__}
        self.data_digest = manifest_digest(manifest)  # recorded with every checkpoint
        self.last_saved = state.progress.step
        self.since_log, self.t_log = 0, time.perf_counter()
        self.paused = 0.0  # seconds of this log interval spent sampling, evaluating, checkpointing: not steps

    def due(self, every: int, step: int) -> bool:
        return step % every == 0 or step == self.cfg.train.steps

    def sync(self, step: int, signals: StopSignals) -> bool:
        """The run's one host collective on its cadence: stop requests and data errors of every rank.
        True: stop here. A data error on any rank stops every rank, with the file named."""
        wants_stop = signals.requested is not None or (self.run_dir.is_main and self.run_dir.stop_file_present())
        stop, data_failed = self.control.flags(wants_stop, self.loader.error is not None)
        if data_failed:
            own = self.loader.error
            failed = "; ".join(self.control.messages(None if own is None else str(own)))
            raise own if own is not None else DataError(f"stopping: data error on another rank ({failed})")
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
            "perf/images_per_s": self.since_log * cfg.loss.d_steps * cfg.data.batch_size * world / elapsed,
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
        self.since_log, self.t_log, self.paused = 0, time.perf_counter(), 0.0

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
            self.monitor.samples(step, generate(self.state.ema.module.eval(), self.fixed_z, self.fixed_labels))

    def evaluate(self, step: int) -> None:
        with self._not_a_step():
            self.evaluator.run(step, self.state.ema.module, self.monitor, self.generator_info)

    def snapshot(self, step: int, signals: StopSignals) -> Path:
        self.last_saved = step
        s = self.state
        ddp.check_consistent({"G": s.g_module, "D": s.d_module}, self.control)
        info = {"world_size": self.accelerator.num_processes, "config_hash": config_hash(self.cfg),
                "data_manifest": self.data_digest, "loss_kind": self.cfg.loss.kind,
                "skipped_samples": self.loader.skipped}
        with signals.critical(), self._not_a_step():
            path = save_checkpoint(self.accelerator, self.control, self.run_dir.path, s, info,
                                   self.cfg.train.keep_checkpoints)
            if self.accelerator.is_main_process:
                save_generator(s.ema.module, self.run_dir.path / "generator", {"step": step, **self.generator_info})
        return path
