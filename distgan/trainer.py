"""The GAN training loop: Accelerate DDP, one code path for CPU (gloo) and GPUs (NCCL).

One step = `d_steps` discriminator updates (each on a fresh real batch) and one
generator update. The GAN-specific DDP points:
- D sees real and fake in ONE forward (`D(cat(real, fake))`): a second forward
  of a BatchNorm D under DDP before its backward fails in-place;
- the G update calls D's *unwrapped* module with its weights frozen, so no D
  gradient is computed or all-reduced during the G step; a BatchNorm D sees the
  same real+fake batch there too (fake alone would give other batch statistics,
  which G learns to game);
- each rank streams its own shards (`ShardLoader`), never through
  `accelerator.prepare`.
Loss scaling: one GradScaler for both optimisers; per-optimiser unscale and
clip. In bf16/fp32 the same scaler (scale fixed at 1) is the guard that skips
a step with non-finite gradients on the device, without a host sync.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

import distgan
from distgan import ddp
from distgan.checkpoint import (list_checkpoints, load_checkpoint, save_checkpoint, save_generator,
                               set_aside_checkpoints_after)
from distgan.config import Config, TrainConfig, config_hash, to_yaml
from distgan.data import ShardLoader, normalize_images
from distgan.ema import EMA
from distgan.losses import decision_threshold, discriminator_loss, generator_loss, gradient_penalty
from distgan.metrics.during_training import TrainingEvaluator
from distgan.models import build_discriminator, build_generator
from distgan.step_graph import GraphedStep, batches_to_device
from distgan.monitor import RunMonitor, tracker_init_kwargs

log = logging.getLogger("distgan")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STAT_KEYS = ("loss/d", "loss/g", "d/real", "d/fake", "d/fooled")  # averaged over each log interval
_stop_requested = False


class TrainingError(RuntimeError):
    """The run cannot go on (for example: too many non-finite steps in a row)."""


def _request_stop(signum, frame) -> None:
    global _stop_requested
    _stop_requested = True
    log.warning("received %s: checkpoint at the next step boundary, then exit", signal.Signals(signum).name)


def d_confidence(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Mean D output on the scale people read: a probability for bce, the raw score otherwise."""
    return torch.sigmoid(logits.float()).mean() if kind == "bce" else logits.float().mean()


def fooled_rate(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """How often D takes a fake for real (its decision threshold depends on the loss)."""
    return (fake_logits.float() > decision_threshold(kind, real_logits)).float().mean()


def resolve_resume(cfg: Config, run_path: Path) -> Path | None:
    existing = list_checkpoints(run_path)
    if cfg.train.resume == "auto":
        return existing[-1] if existing else None
    if cfg.train.resume == "none":
        if existing:
            raise TrainingError(f"{run_path} already has checkpoints; use train.resume=auto or another name")
        return None
    path = Path(cfg.train.resume)
    if not (path / "state.json").is_file():
        raise TrainingError(f"train.resume={path}: not a complete checkpoint directory")
    return path


def mixed_precision(cfg: Config) -> str:
    """The run's own train.mixed_precision; where it is "no", the launcher's (launch/*.yaml, --mixed_precision)."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if cfg.train.mixed_precision == "no":
        return launcher
    if launcher not in ("no", cfg.train.mixed_precision):
        log.warning("train.mixed_precision=%s overrides the launcher's %s", cfg.train.mixed_precision, launcher)
    return cfg.train.mixed_precision


def _use_step_graph(train_cfg: TrainConfig, device: torch.device, world: int) -> bool:
    """train.cuda_graph: null (auto) replays the step as a CUDA graph where it can, i.e. one CUDA process and
    no torch.compile; true insists (an error where it cannot); false never."""
    wanted = train_cfg.cuda_graph
    if wanted is False or (wanted is None and train_cfg.compile):
        return False
    if device.type != "cuda":
        if wanted:
            log.warning("train.cuda_graph needs a CUDA device; training eagerly on %s", device.type)
        return False
    if world > 1:
        if wanted:
            raise TrainingError(f"train.cuda_graph replays one process's step; this run has {world} processes "
                                f"(DDP's gradient all-reduce is not captured): set train.cuda_graph=false or null")
        log.info("%d processes: the step runs eagerly (the CUDA graph is for one process)", world)
        return False
    return True


def train(cfg: Config) -> str:
    """Run (or resume) training; returns 'completed' or 'stopped' (checkpoint written on a signal)."""
    global _stop_requested
    _stop_requested = False
    run_path = cfg.run_path
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision=mixed_precision(cfg)))
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision,
                              log_with=None if cfg.log.log_with == "none" else cfg.log.log_with,
                              project_dir=str(run_path))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world:  # e.g. a multi-process launch on a CPU-only machine without ACCELERATE_USE_CPU=1
        raise TrainingError(f"the launcher started {launched} processes, but this one sees a world of {world}: "
                            f"each would train alone into the same run directory. Without GPUs, set "
                            f"ACCELERATE_USE_CPU=1 (see launch/cpu.yaml)")
    for signum in STOP_SIGNALS:
        signal.signal(signum, _request_stop)
    set_seed(cfg.seed, device_specific=True)  # each rank draws its own noise
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark

    loader = ShardLoader(cfg.data.path, cfg.data.split, cfg.data.batch_size, rank=rank, world_size=world,
                         seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                         num_workers=cfg.data.num_workers, on_corrupt=cfg.data.on_corrupt,
                         shards=cfg.data.shards, pin_memory=device.type == "cuda")
    manifest = loader.manifest
    if cfg.model.conditional and manifest.num_classes < 2:
        raise TrainingError(f"model.conditional needs class labels; {cfg.data.path} has none")
    num_classes = manifest.num_classes if cfg.model.conditional else 0
    evaluator = TrainingEvaluator(cfg, accelerator, manifest, run_path, num_classes)  # fails here, not later
    shape = (manifest.channels, manifest.height, manifest.width)
    G = build_generator(cfg.model, *shape, num_classes)
    D = build_discriminator(cfg.model, *shape, num_classes)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    lr_scale = {"none": 1.0, "linear": float(world), "sqrt": math.sqrt(world)}[cfg.optim.lr_scaling]
    whole_step_graph = _use_step_graph(cfg.train, device, world)
    adam = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    if whole_step_graph:
        adam["capturable"] = True  # Adam's step counter stays on the device, where the graph can update it
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.g_lr * lr_scale, betas=tuple(cfg.optim.g_betas), **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr * lr_scale, betas=tuple(cfg.optim.d_betas), **adam)
    G, D = accelerator.prepare(G, D)
    g_module, d_module = accelerator.unwrap_model(G), accelerator.unwrap_model(D)
    ema = EMA(g_module, cfg.optim.ema_decay)
    d_for_g = d_module  # D as the G step calls it: unwrapped, no DDP gradient hooks
    if cfg.train.compile:
        mode = None if cfg.train.compile_mode == "default" else cfg.train.compile_mode
        G, D, d_for_g = (torch.compile(m, mode=mode) for m in (G, D, d_module))
    compiled_graphs = cfg.train.compile and cfg.train.compile_mode in ("reduce-overhead", "max-autotune")
    fp16 = cfg.train.mixed_precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16 if fp16 else 1.0)

    step, epoch, batch_index, resumed_from = 0, 0, 0, None
    checkpoint = resolve_resume(cfg, run_path)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, {"g": opt_g, "d": opt_d}, scaler, ema)
        step, epoch, batch_index = state["step"], state["epoch"], state["batch"]
        saved_world = state.get("world_size", world)
        if saved_world != world:  # a batch index of `saved_world` ranks: resume after as many images of the epoch
            batch_index = min(batch_index * saved_world // world, len(loader))
        resumed_from = checkpoint
    if accelerator.is_main_process:
        run_path.mkdir(parents=True, exist_ok=True)
        (run_path / "config.yaml").write_text(to_yaml(cfg))
        (run_path / "COMPLETED").unlink(missing_ok=True)
        if resumed_from is not None:
            _truncate_metrics(run_path / "metrics.jsonl", step)
            moved = set_aside_checkpoints_after(run_path, step)
            if moved:
                log.warning("resumed from step %d: %d newer checkpoint(s) of this run moved to %s (%s)", step,
                            len(moved), moved[0].parent, ", ".join(p.name for p in moved))
    # The trackers run on rank 0 alone; only it reads or writes the W&B id file.
    accelerator.init_trackers(cfg.log.project, config=_flat_config(cfg),
                              init_kwargs=tracker_init_kwargs(cfg, run_path) if accelerator.is_main_process else {})
    log.info("run %s: %d rank(s) on %s, %s%s, global batch %d, %d batches/epoch/rank%s", run_path, world,
             device.type, cfg.train.mixed_precision, ", the step as one CUDA graph" if whole_step_graph else "",
             cfg.data.batch_size * world, len(loader),
             f", resumed from {resumed_from}" if resumed_from else "")
    monitor = RunMonitor(accelerator, cfg, run_path, step)
    fixed = torch.Generator().manual_seed(cfg.seed)
    fixed_z = torch.randn(cfg.log.sample_grid, cfg.model.nz, generator=fixed).to(device)
    fixed_labels = (torch.arange(cfg.log.sample_grid) % max(num_classes, 1)).to(device) if num_classes else None
    generator_info = {"dataset": manifest.name, "classes": manifest.classes if num_classes else [],
                      "image_shape": list(shape), "config_hash": config_hash(cfg),
                      "distgan_version": distgan.__version__}

    last_saved = step

    def snapshot(at: int) -> None:
        nonlocal last_saved
        last_saved = at
        ddp.check_consistent({"G": g_module, "D": d_module}, world)
        state = {"step": at, "epoch": epoch, "batch": batch_index, "world_size": world,
                 "config_hash": config_hash(cfg), "skipped_samples": loader.skipped}
        save_checkpoint(accelerator, run_path, at, {"g": opt_g, "d": opt_d}, scaler, ema, state,
                        cfg.train.keep_checkpoints)
        if accelerator.is_main_process:
            save_generator(ema.module, run_path / "generator", {"step": at, **generator_info})

    def sample(at: int) -> None:
        with torch.no_grad(), accelerator.autocast():
            monitor.samples(at, ema.module.eval()(fixed_z, fixed_labels))

    def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # per optimiser: clip sees true gradients
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        scaler.step(optimizer)  # skipped on the device when a gradient is not finite
        scaler.update(None if fp16 else 1.0)
        optimizer.zero_grad(set_to_none=True)

    B, kind = cfg.data.batch_size, cfg.loss.kind
    d_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d_module.modules())
    zero = lambda: torch.zeros((), device=device)
    sums = torch.zeros(len(STAT_KEYS), device=device)  # one vector: a handful of kernels per step, not dozens
    bad_total, bad_run = zero(), zero()

    def train_step(reals: list[tuple[torch.Tensor, torch.Tensor | None]], ema_step: int | torch.Tensor) -> None:
        """`d_steps` D updates (one per real batch: uint8 NHWC and labels, on the device), one G update and
        the EMA. All it changes is changed in place, so a CUDA graph of it goes on updating the same tensors."""
        for d_iter, (images, labels) in enumerate(reals):
            real = normalize_images(images)
            z = torch.randn(B, cfg.model.nz, device=device)
            fake_labels = torch.randint(0, num_classes, (B,), device=device) if num_classes else None
            with torch.set_grad_enabled(d_iter == len(reals) - 1), accelerator.autocast():
                fake = G(z, fake_labels)  # kept with its graph for the G step on the last D step
            with accelerator.autocast():
                both = torch.cat([real, fake.detach()]).contiguous(memory_format=torch.channels_last)
                both_labels = torch.cat([labels, fake_labels]) if num_classes else None
                real_logits, fake_logits = D(both, both_labels).split(B)
                loss_d = discriminator_loss(kind, real_logits, fake_logits, cfg.loss.real_label)
                if kind == "wgan-gp":
                    loss_d = loss_d + cfg.loss.gp_weight * gradient_penalty(d_module, real, fake.detach(), labels)
            optimizer_step(opt_d, loss_d, d_module.parameters())
        d_module.requires_grad_(False)
        with accelerator.autocast():
            if d_batchnorm:  # same real+fake batch statistics as in the D step, or G games them
                both = torch.cat([real, fake]).contiguous(memory_format=torch.channels_last)
                fake_scores = d_for_g(both, both_labels)[B:]
            else:
                fake_scores = d_for_g(fake, fake_labels)
            loss_g = generator_loss(kind, fake_scores)
        optimizer_step(opt_g, loss_g, g_module.parameters())
        d_module.requires_grad_(True)
        ema.update(g_module, ema_step)
        with torch.no_grad():
            stats = torch.stack([loss_d.detach().float(), loss_g.detach().float(),
                                 d_confidence(kind, real_logits), d_confidence(kind, fake_logits),
                                 fooled_rate(kind, real_logits, fake_logits)])
            bad = (~torch.isfinite(stats[:2])).any().float()
            bad_total.add_(bad)
            bad_run.add_(bad).mul_(bad)  # consecutive non-finite steps
            sums.add_(torch.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0))

    def eager_step(host: list[tuple[torch.Tensor, torch.Tensor | None]], at: int) -> None:
        train_step(batches_to_device(host, device), at)

    run_step = GraphedStep(train_step, device) if whole_step_graph else eager_step
    batches = loader.endless(epoch, batch_index)
    since_log, t_log = 0, time.perf_counter()
    status = "completed"
    try:
        while step < cfg.train.steps:
            if ddp.any_rank(_stop_requested or (run_path / "STOP").exists(), world):
                status = "stopped"
                break
            if compiled_graphs:  # torch.compile's CUDA graphs: the previous step's tensors may now be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            host = []
            for _ in range(cfg.loss.d_steps):
                epoch, batch_index, batch = next(batches)
                host.append((batch.images, batch.labels if num_classes else None))
            run_step(host, step)
            step += 1
            since_log += 1
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                means = (accelerator.reduce(sums, "mean") / since_log).tolist()
                # A non-finite loss on one rank skips the step on every rank (gradients are all-reduced):
                # every rank counts it, so all stop together and rank 0 logs it.
                bad_steps, bad_in_a_row = (int(n) for n in accelerator.reduce(torch.stack([bad_total, bad_run]),
                                                                              "max").tolist())
                skipped = int(accelerator.reduce(torch.tensor([loader.skipped], device=device), "sum").item())
                values = dict(zip(STAT_KEYS, means))
                elapsed = time.perf_counter() - t_log
                values.update({
                    "epoch": epoch, "perf/images_per_s": since_log * cfg.loss.d_steps * B * world / elapsed,
                    "lr/g": opt_g.param_groups[0]["lr"], "lr/d": opt_d.param_groups[0]["lr"],
                    "train/bad_steps": bad_steps, "data/skipped": skipped,
                })
                if device.type == "cuda":
                    values["mem/gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                monitor.log(step, values)
                if bad_in_a_row >= cfg.train.max_bad_steps:
                    raise TrainingError(
                        f"{bad_in_a_row} non-finite steps in a row at step {step} (all skipped); "
                        f"stopping. The last good checkpoint is intact in {run_path / 'checkpoints'}; "
                        f"try a lower learning rate or mixed_precision=bf16"
                    )
                sums.zero_()
                since_log, t_log = 0, time.perf_counter()
            monitor.advance(1)
            if step % cfg.train.sample_every == 0:
                sample(step)
            if evaluator.due(step):
                evaluator.run(step, ema.module, monitor, generator_info)
            if step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
                snapshot(step)
        if step != last_saved:
            snapshot(step)
        if status == "completed":
            if step % cfg.train.sample_every:
                sample(step)
            monitor.finish()
            if accelerator.is_main_process:
                (run_path / "COMPLETED").write_text(f"{step}\n")
        log.info("%s at step %d; checkpoints in %s", status, step, run_path / "checkpoints")
    finally:
        accelerator.end_training()
    return status


def _truncate_metrics(path: Path, step: int) -> None:
    """After a resume, drop the log lines of steps that will be run again: one unbroken counter.

    A line cut short (a kill or a full disk while it was written) is dropped too, with a warning.
    """
    if not path.exists():
        return
    import json

    kept = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            log.warning("%s: line %d is not JSON (cut short?); dropped: %.80s", path, number, line)
            continue
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _flat_config(cfg: Config) -> dict:
    from omegaconf import OmegaConf

    flat = {}
    for section, values in OmegaConf.to_container(OmegaConf.structured(cfg)).items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": (str(v) if isinstance(v, (list, tuple)) else v) for k, v in values.items()})
        else:
            flat[section] = values
    return flat
