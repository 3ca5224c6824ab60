"""Launched by tests/test_lapgan.py on 2 gloo ranks: train `train.levels: all` of a 3-level pyramid; each rank
writes which levels it trained and when (so the test can tell they ran at the same time)."""

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

from distgan.config import Config
from distgan.models.lapgan import LapganSpec
from distgan.training import level_run


def main() -> None:
    data, run_dir, levels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    dist.init_process_group("gloo")
    cfg = Config(name="lap", run_dir=run_dir)
    cfg.data.path, cfg.data.batch_size, cfg.data.num_workers, cfg.data.shuffle_buffer = data, 16, 0, 64
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every = 6, 3, 3
    spec = LapganSpec(channels=1, height=28, width=28, num_classes=10, conditional=True, coarse_nz=16, ngf=8, ndf=8)
    start = time.time()
    trainers, _ = level_run.train_levels(cfg, spec, levels, {"dataset": "test", "classes": [str(i) for i in range(10)],
                                                      "distgan_version": "0", "config_hash": "h"})
    end, rank = time.time(), dist.get_rank()
    done = {t.level: t.step for t in trainers}
    weights = {t.level: sum(p.double().sum().item() for p in t.g_module.parameters()) for t in trainers}
    first_real = {t.level: int(t.loader.epoch(0).__next__().images.sum()) for t in trainers}
    Path(run_dir, f"rank{rank}.json").write_text(json.dumps({"levels": done, "start": start, "end": end,
                                                             "weights": weights, "first_batch": first_real}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
