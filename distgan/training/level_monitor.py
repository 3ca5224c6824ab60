"""What a LAPGAN level shows while it trains, from the level's first rank: its losses in
`levels/level-K/metrics.jsonl`, a PNG grid of what it generates at every checkpoint, and with
`log.log_with: wandb` one W&B run per level (grouped under the run's name, resumed with the level).

A finer level's grid shows up(I_{k+1}) + G_k's residual for real coarser images: what D_k judges.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from distgan.config import Config
from distgan.pyramid_run import level_dir
from distgan.runtime import encode_png, grid, to_uint8_nhwc, write_atomically

GRID_IMAGES = 16


class LevelMonitor:
    def __init__(self, cfg: Config, run_path: Path, level: int, step: int):
        self.directory = level_dir(run_path, level)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics = self.directory / "metrics.jsonl"
        self._cut_metrics(step)
        self.wandb = None
        if cfg.log.log_with == "wandb":
            import wandb
            run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{cfg.name}-level{level}")
            self.wandb = wandb.init(project=cfg.log.project, name=f"{cfg.name} level {level}", group=cfg.name,
                                    id=run_id, resume="allow", dir=str(self.directory), reinit="create_new",
                                    config={"level": level, "run": cfg.name})

    def _cut_metrics(self, step: int) -> None:
        """A resumed level continues its log: lines after the resumed step go (they will be written again)."""
        if not self.metrics.is_file():
            return
        kept = [line for line in self.metrics.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.metrics.write_text("".join(f"{line}\n" for line in kept))

    def log(self, step: int, values: dict[str, float]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def images(self, step: int, images: torch.Tensor) -> None:
        """A grid of `images` (in [-1, 1]) as samples/step-N.png, and to W&B."""
        picture = grid(to_uint8_nhwc(images[:GRID_IMAGES].detach().float().cpu().numpy()), min_side=256)
        (self.directory / "samples").mkdir(exist_ok=True)
        write_atomically(self.directory / "samples" / f"step-{step:07d}.png", encode_png(picture, {"step": str(step)}))
        if self.wandb is not None:
            import wandb
            self.wandb.log({"samples": wandb.Image(np.ascontiguousarray(picture))}, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
