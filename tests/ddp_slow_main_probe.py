"""Run under `accelerate launch`: the real trainer, with rank 0 held back before it sets up the run directory,
so the other ranks run ahead of it (as a slow file system or a busy node can make them)."""

import sys
import time

from accelerate import PartialState

import distgan.training
from distgan.training.run_dir import RunDirectory
from distgan.config import load_config

cfg = load_config(sys.argv[1], sys.argv[2:])
real_resolve = RunDirectory.resolve_resume


def slow_on_rank0(self, resume):
    if PartialState().is_main_process:
        time.sleep(3)
    return real_resolve(self, resume)


RunDirectory.resolve_resume = slow_on_rank0
distgan.training.train(cfg)
