"""The training loop: build the parts, resume, then step and act on each cadence until done or asked to stop.

A batch's path: each rank's `ShardLoader` streams its own shards (never through
`accelerator.prepare`) -> host uint8 batches -> `EagerStep`/`GraphedStep` move them
to the device -> `GANStep` (D and G updates, EMA) -> `RunActions` log, sample,
evaluate and checkpoint on their cadence; `RunActions.sync` is the one host
collective, every `train.sync_every` steps and before every periodic action.
"""

from __future__ import annotations

import logging

from accelerate import Accelerator

from distgan.config import Config
from distgan.data import ShardLoader
from distgan.ddp import Control, is_lost_peer
from distgan.metrics.during_training import TrainingEvaluator
from distgan.models import get_family
from distgan.monitor import RunMonitor
from distgan.training.actions import RunActions, manifest_digest
from distgan.training.checkpoint import resume
from distgan.training.errors import TrainingError
from distgan.training.graph import EagerStep, GraphedStep, capture_stream, use_step_graph, warmup_steps
from distgan.training.run_dir import RunDirectory
from distgan.training.session import start_process
from distgan.training.signals import StopNow, StopSignals
from distgan.training.state import build_state
from distgan.training.step import GANStep

log = logging.getLogger("distgan")


def open_data(cfg: Config, accelerator: Accelerator, control: Control) -> tuple[ShardLoader, int]:
    """This rank's loader (data errors kept for the loop's sync) and the number of classes G and D condition on."""
    loader = ShardLoader(cfg.data.path, cfg.data.split, cfg.data.batch_size, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                         num_workers=cfg.data.num_workers, on_corrupt=cfg.data.on_corrupt, shards=cfg.data.shards,
                         pin_memory=accelerator.device.type == "cuda", control=control,
                         defer_errors=control.active)
    if cfg.model.conditional and loader.manifest.num_classes < 2:
        raise TrainingError(f"model.conditional needs class labels; {cfg.data.path} has none")
    num_classes = loader.manifest.num_classes if cfg.model.conditional else 0
    shape = (loader.manifest.channels, loader.manifest.height, loader.manifest.width)
    try:  # the family's own keys against the data, before anything is built
        get_family(cfg.model.arch).check(cfg.model, shape, num_classes)
    except ValueError as exc:
        raise TrainingError(f"config: {exc}") from None
    return loader, num_classes


def train(cfg: Config) -> str:
    """Run (or resume) training; returns 'completed' or 'stopped' (a checkpoint written on a stop request)."""
    cfg, accelerator = start_process(cfg)
    control, run_dir = Control(accelerator.num_processes), RunDirectory(cfg, accelerator.is_main_process)
    run_dir.acquire(control, cfg.train.force_unlock)
    try:
        return train_holding_the_lock(cfg, accelerator, control, run_dir)
    finally:
        run_dir.release()


def train_holding_the_lock(cfg: Config, accelerator: Accelerator, control: Control, run_dir: RunDirectory) -> str:
    """The run itself, once this start is the run directory's one writer."""
    world, device = accelerator.num_processes, accelerator.device
    loader, num_classes = open_data(cfg, accelerator, control)
    manifest = loader.manifest
    evaluator = TrainingEvaluator(cfg, accelerator, manifest, run_dir.path, num_classes, control)  # fails early
    lazy = (cfg.loss.r1_gamma > 0 and cfg.loss.r1_every > 1) or (cfg.loss.pl_weight > 0 and cfg.loss.pl_every > 1)
    graphed = use_step_graph(cfg.train, device, world, lazy_r1=lazy, sync_bn=cfg.model.sync_bn)
    stream = capture_stream(graphed, device)
    try:
        state = build_state(cfg, accelerator, (manifest.channels, manifest.height, manifest.width), num_classes,
                            capturable=graphed, ddp_stream=stream)
    except ValueError as exc:  # the model's own check that it fits the data (e.g. dcgan64 on 28x28 images)
        raise TrainingError(f"{cfg.data.path}: {exc}") from None
    resume_from = run_dir.resolve_resume(cfg.train.resume)
    changes, saved = resume(cfg, accelerator, run_dir, resume_from, state, manifest_digest(manifest), len(loader))
    progress = state.progress
    state.start_schedules(cfg)
    logged_before = run_dir.start(cfg, progress.step if resume_from else None, changes)
    run_dir.start_trackers(accelerator, cfg)
    step = GANStep(cfg, state, num_classes, accelerator.autocast)
    run_step = GraphedStep(step, device, warmup_steps(state.G), stream) if graphed else EagerStep(step, device)
    monitor = RunMonitor(accelerator, cfg, run_dir.path, progress.step, logged_before)
    actions = RunActions(cfg, accelerator, control, run_dir, state, step, loader, monitor, evaluator, num_classes)
    actions.restore_log_interval(saved)
    batches = loader.endless(progress.epoch, progress.batch)
    t, status = cfg.train, "completed"
    signals = StopSignals()
    try:
        with signals:
            stop = actions.sync(progress.step, signals)  # after it, every rank takes stop signals as a run's
            log.info("run %s: %d rank(s) on %s, %s%s, global batch %d, %d batches/epoch/rank%s", run_dir.path, world,
                     device.type, cfg.train.mixed_precision, ", the step as one CUDA graph" if graphed else "",
                     cfg.data.batch_size * world, len(loader), f", resumed from {resume_from}" if resume_from else "")
            while progress.step < t.steps and not stop:
                signals.raise_if_stopped_now()
                host = []
                for _ in range(cfg.loss.d_steps):
                    progress.epoch, progress.batch, batch = next(batches)
                    host.append((batch.images, batch.labels if num_classes else None))
                run_step(host, progress.step)
                for scheduler in state.schedulers:
                    scheduler.step()
                progress.step += 1
                actions.since_log += 1
                monitor.advance(1)
                at = progress.step
                periodic = [actions.due(every, at) for every in (t.log_every, t.sample_every, t.checkpoint_every)]
                if evaluator.due(at) or any(periodic) or at % t.sync_every == 0:
                    stop = actions.sync(at, signals)
                if cfg.aug.adaptive and at % cfg.aug.interval == 0:
                    actions.adapt_augmentation()
                if periodic[0]:
                    actions.log(at)
                if at % t.sample_every == 0:
                    actions.sample(at)
                if evaluator.due(at):
                    actions.evaluate(at)
                if at % t.checkpoint_every == 0 and at < t.steps and not stop:
                    actions.snapshot(at, signals)
            status = "stopped" if stop and progress.step < t.steps else "completed"
            if progress.step != actions.last_saved:
                actions.snapshot(progress.step, signals)
        if status == "completed":
            if progress.step % t.sample_every:
                actions.sample(progress.step)
            monitor.finish()
            run_dir.mark_completed(progress.step)
        else:
            run_dir.mark_stopped(progress.step)
        log.info("%s at step %d; checkpoints in %s", status, progress.step, run_dir.path / "checkpoints")
    except RuntimeError as exc:  # a peer died: name it, rather than wait for a collective's timeout
        if not (control.active and is_lost_peer(exc)):
            raise
        if signals.stopped_now:  # this rank's own StopNow was lost (see signals.py); the peer stopped at once too
            raise StopNow("second Ctrl-C: stopped at once, without a checkpoint") from exc
        raise TrainingError(f"lost contact with {control.lost_ranks()} at step {progress.step} "
                            f"({str(exc).splitlines()[0][:160]}); "
                            f"resume from the last checkpoint with train.resume=auto", every_rank=False) from exc
    finally:
        try:
            accelerator.end_training()
        except OSError as exc:  # e.g. W&B's service, ended by the same SIGTERM (SLURM signals the whole step)
            log.warning("closing the trackers failed (%s); the run's own files (checkpoint, metrics.jsonl, "
                        "STOPPED/COMPLETED) are complete", exc)
    return status
