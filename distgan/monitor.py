"""What people see, from rank 0 only: progress bar, metrics.jsonl, trackers, sample grids, plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from tqdm import tqdm

from distgan.config import Config
from distgan.runtime import encode_png, grid, to_pil, to_uint8_nhwc, write_atomically

log = logging.getLogger("distgan")


class RunMonitor:
    def __init__(self, accelerator: Accelerator, cfg: Config, run_path: Path, start_step: int,
                 tracked_before: int = 0):
        """`tracked_before`: the last step an earlier start of this run sent to the trackers. A resumed W&B run
        keeps what it got; those steps are not sent again (a step is logged once; a CPU resume recomputes the
        same values bitwise, so nothing differs)."""
        self.accelerator, self.cfg, self.run_path = accelerator, cfg, run_path
        self.tracked_before = tracked_before
        self.active = accelerator.is_main_process
        self.bar = None
        self.postfix: dict[str, str] = {}
        self.trackers_up = True
        if self.active:
            (run_path / "samples").mkdir(parents=True, exist_ok=True)
            self.bar = tqdm(total=cfg.train.steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc=cfg.name)

    def log(self, step: int, values: dict[str, float]) -> None:
        """One line in metrics.jsonl, the trackers, and the progress bar."""
        if not self.active:
            return
        record = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        with open(self.run_path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if step > self.tracked_before:
            self._to_trackers(lambda: self.accelerator.log(values, step=step))
        if "loss/d" in values:  # a training line, not an evaluation line
            self.postfix.update(d=f"{values['loss/d']:.3f}", g=f"{values['loss/g']:.3f}",
                                img_s=f"{values['perf/images_per_s']:.0f}")
            if "aug/p" in values:  # what ADA is doing, at a glance
                self.postfix["p"] = f"{values['aug/p']:.3f}"
        if "eval/fid" in values:
            self.postfix["fid"] = f"{values['eval/fid']:.2f}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def advance(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def samples(self, step: int, images: torch.Tensor) -> Path | None:
        """Save a fixed-noise grid (float [-1, 1] NCHW) as PNG and send it to the trackers."""
        if not self.active:
            return None
        picture = grid(to_uint8_nhwc(images.float()).cpu().numpy(), columns=8, min_side=512)
        path = self.run_path / "samples" / f"step-{step:07d}.png"
        write_atomically(path, encode_png(picture, {"step": str(step)}))  # a kill never leaves a cut-short grid
        picture = np.asarray(to_pil(picture).convert("RGB"))
        for tracker in self.accelerator.trackers if step > self.tracked_before else ():
            if tracker.name == "tensorboard":
                self._to_trackers(lambda: tracker.log_images({"samples": picture[None]}, step=step, dataformats="NHWC"))
            elif tracker.name == "wandb":
                self._to_trackers(lambda: tracker.log_images({"samples": [picture]}, step=step))
        return path

    def _to_trackers(self, send) -> None:
        """A tracker that fails (W&B's service ended by a job-wide SIGTERM, a full disk under its directory)
        is dropped with one warning; training and the run's own files go on."""
        if not self.trackers_up:
            return
        try:
            send()
        except OSError as exc:
            self.trackers_up = False
            log.warning("the trackers failed (%s); no more tracker logging in this run, metrics.jsonl and "
                        "samples/ go on", exc)

    def finish(self) -> None:
        """Loss curves and an animated GIF of the fixed-noise grids over training."""
        if not self.active:
            return
        self.bar.close()
        write_loss_plot(self.run_path / "metrics.jsonl", self.run_path / "losses.png")
        grids = sorted((self.run_path / "samples").glob("step-*.png"))
        frames = []
        for path in grids:
            try:
                frames.append(Image.open(path).convert("P"))
            except OSError as exc:  # e.g. a grid some other program left unreadable: not worth failing the run
                log.warning("%s: not a readable PNG (%s); left out of progress.gif", path, exc)
        if frames:
            frames[0].save(self.run_path / "progress.gif", save_all=True, append_images=frames[1:],
                           duration=300, loop=0)


def write_loss_plot(metrics: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics.exists():
        return
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss/d" in r]  # evaluation lines have their own keys
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss/d", "D loss"), ("loss/g", "G loss")):
        ax_loss.plot(steps, [r[key] for r in rows], label=label)
    ax_loss.set_xlabel("step")
    ax_loss.legend()
    ax_loss.set_title("losses")
    for key, label in (("d/real", "D(x)"), ("d/fake", "D(G(z))"), ("d/fooled", "fooled")):
        ax_d.plot(steps, [r[key] for r in rows], label=label)
    ax_d.set_xlabel("step")
    ax_d.legend()
    ax_d.set_title("discriminator")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
