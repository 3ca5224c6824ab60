"""The process's part in a run: the Accelerator (precision, world), seeds and backend switches."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from distgan.config import Config
from distgan.training.errors import TrainingError
from distgan.training.launcher_watch import watch_launcher

log = logging.getLogger("distgan")


def resolve_precision(wanted: str | None) -> str:
    """train.mixed_precision, where null means the launcher's (launch/*.yaml, --mixed_precision; else fp32).

    A value the run sets wins over the launcher's, "no" included: it means fp32."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if wanted is None:
        return launcher
    if launcher not in ("no", wanted):
        log.warning("train.mixed_precision=%s overrides the launcher's %s", wanted, launcher)
    return wanted


def start_process(cfg: Config) -> tuple[Config, Accelerator]:
    """(the config with its precision resolved, the Accelerator); refuses a world that did not form."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, mixed_precision=resolve_precision(cfg.train.mixed_precision)))
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision,
                              log_with=None if cfg.log.log_with == "none" else cfg.log.log_with,
                              project_dir=str(cfg.run_path))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    launched, world = int(os.environ.get("WORLD_SIZE", "1")), accelerator.num_processes
    if launched != world:  # e.g. a multi-process launch on a CPU-only machine without ACCELERATE_USE_CPU=1
        raise TrainingError(f"the launcher started {launched} processes, but this one sees a world of {world}: "
                            f"each would train alone into the same run directory. Without GPUs, set "
                            f"ACCELERATE_USE_CPU=1 (see launch/cpu.yaml)")
    watch_launcher()  # no orphan ranks: a rank whose launcher died stops (launcher_watch.py)
    set_seed(cfg.seed, device_specific=True)  # each rank draws its own noise
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    return cfg, accelerator
