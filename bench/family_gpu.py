"""Every model family's training figures on one device (issue 30): images/s of the trainer's own step in fp32
and bf16, its peak memory, and the largest batch that fits.

Each (family, precision) runs in a child process, so each starts with a clean allocator and a fresh
Accelerate state. The step is the trainer's: the family's networks and optimisers from `build_state`, the
`GANStep`, replayed as a CUDA graph where the trainer would (`use_step_graph`: not with lazy R1 / path
length, so StyleGAN2 runs eagerly), on synthetic uint8 batches already pinned in host memory (the loader's
output; the data path is measured by bench/loader.py). LAPGAN times its own level trainer (one level after
the other, as one GPU trains them; its steps read both losses back, as the level trainer does).

The largest batch: doubling from the configured batch until CUDA runs out of memory, then bisection, with
two eager steps per try (a graphed step needs the same activations plus the graph's pool; the figure is
an upper bound for it). On a CPU (`--device cpu --smoke`) the same code runs at tiny widths and batches,
so the script is checked where no GPU is (tests/test_bench_family_gpu.py).

    python bench/family_gpu.py                        # on a GPU: every family, fp32 and bf16
    python bench/family_gpu.py --families resnet128 --precisions bf16
    python bench/family_gpu.py --device cpu --smoke   # the code path, in seconds

Prints a table, then one JSON line: `<family>_<precision>_img_s`, `_peak_gb`, `_max_batch`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# family -> (config, image shape, batch the images/s is measured at)
FAMILIES = {
    "resnet32": ("configs/resnet32.yaml", (3, 32, 32), 64),
    "resnet128": ("configs/resnet128.yaml", (3, 128, 128), 64),
    "stylegan2_32": ("configs/stylegan2_32.yaml", (3, 32, 32), 64),
    "stylegan2_128": ("configs/stylegan2_128.yaml", (3, 128, 128), 32),
    "srgan_x4": ("configs/srgan.yaml", (3, 96, 96), 16),
    "lapgan": ("configs/lapgan.yaml", (1, 28, 28), 64),
}
# --smoke: widths small enough for a CPU (the families' own width keys)
SMOKE = {
    "resnet32": ["model.ngf=8", "model.ndf=8"],
    "resnet128": ["model.ngf=8", "model.ndf=8", "model.attention_res=32"],
    "stylegan2_32": ["model.channel_base=256", "model.channel_max=16", "model.nz=16", "model.w_dim=16"],
    "stylegan2_128": ["model.channel_base=256", "model.channel_max=8", "model.nz=16", "model.w_dim=16"],
    "srgan_x4": ["model.blocks=1", "model.d_dense=16", "train.pretrain_steps=0"],
    "lapgan": ["model.ngf=8", "model.ndf=8"],
}
NUM_CLASSES = 10


def synthetic_shards(family: str, out: Path) -> Path:
    """Random uint8 images (and labels, for conditional configs) of the family's shape, as training shards."""
    from distgan.data.shards import write_shards
    from distgan.data.sources import RawDataset, RawSplit

    c, h, w = FAMILIES[family][1]
    n = 256
    images = np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    labels = np.arange(n) % NUM_CLASSES
    classes = [f"c{i}" for i in range(NUM_CLASSES)]
    raw = RawDataset(f"synthetic-{family}", h, w, c, classes, {"train": RawSplit(labels, lambda i: images[i])})
    write_shards(raw, out, samples_per_shard=n // 4)
    return out


def family_config(family: str, precision: str, batch: int, data: Path, run_dir: Path, smoke: bool):
    from distgan.config import load_config

    overrides = [f"data.path={data}", f"run_dir={run_dir}", f"data.batch_size={batch}", "log.log_with=none",
                 f"train.mixed_precision={precision}", "data.num_workers=0", *(SMOKE[family] if smoke else [])]
    return load_config(REPO / FAMILIES[family][0], overrides)


class GanStepTimer:
    """The trainer's step for one config: build it, then time it or try whether a batch fits."""

    def __init__(self, cfg, shape: tuple[int, int, int]):
        from distgan.training.session import start_process

        self.cfg, accelerator = start_process(cfg)
        self.accelerator, self.shape = accelerator, shape

    def build(self, batch: int, graphed_if_possible: bool):
        import dataclasses

        from distgan.training.graph import EagerStep, GraphedStep, capture_stream, use_step_graph, warmup_steps
        from distgan.training.state import build_state
        from distgan.training.step import GANStep

        cfg = dataclasses.replace(self.cfg, data=dataclasses.replace(self.cfg.data, batch_size=batch))
        device = self.accelerator.device
        num_classes = NUM_CLASSES if cfg.model.conditional else 0
        loss = cfg.loss
        lazy = (loss.r1_gamma > 0 and loss.r1_every > 1) or (loss.pl_weight > 0 and loss.pl_every > 1)
        graphed = graphed_if_possible and use_step_graph(cfg.train, device, 1, lazy_r1=lazy,
                                                         sync_bn=cfg.model.sync_bn)
        stream = capture_stream(graphed, device)
        state = build_state(cfg, self.accelerator, self.shape, num_classes, capturable=graphed, ddp_stream=stream)
        step = GANStep(cfg, state, num_classes, self.accelerator.autocast)
        run = GraphedStep(step, device, warmup_steps(state.G), stream) if graphed else EagerStep(step, device)
        c, h, w = self.shape
        pin = device.type == "cuda"
        host = [(torch.randint(0, 256, (batch, h, w, c), dtype=torch.uint8, pin_memory=pin),
                 torch.randint(0, NUM_CLASSES, (batch,), pin_memory=pin) if num_classes else None)
                for _ in range(cfg.loss.d_steps)]
        return run, host, graphed

    def images_per_s(self, batch: int, steps: int) -> tuple[float, float, bool]:
        """(images/s over `steps` after the warm-up and capture, peak GiB, graphed)."""
        run, host, graphed = self.build(batch, graphed_if_possible=True)
        for i in range(15):  # eager warm-up (DDP's 11 included) and the capture
            run(host, i)
        sync(self.accelerator.device)
        reset_peak(self.accelerator.device)
        start = time.perf_counter()
        for i in range(steps):
            run(host, 15 + i)
        sync(self.accelerator.device)
        seconds = time.perf_counter() - start
        return steps * batch / seconds, peak_gb(self.accelerator.device), graphed

    def fits(self, batch: int) -> bool:
        try:
            run, host, _ = self.build(batch, graphed_if_possible=False)
            for i in range(2):
                run(host, i)
            sync(self.accelerator.device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            gc.collect()
            if self.accelerator.device.type == "cuda":
                torch.cuda.empty_cache()


class LevelTimer:
    """LAPGAN's level trainer: every level of the pyramid, one after the other on this device."""

    def __init__(self, cfg, shape: tuple[int, int, int]):
        self.cfg, self.shape = cfg, shape
        self.device = torch.device("cpu" if os.environ.get("ACCELERATE_USE_CPU") == "1" or not torch.cuda.is_available()
                                   else "cuda")

    def trainers(self, batch: int):
        import dataclasses

        from distgan.training.level_run import LevelPlace, LevelTrainer, spec_from_config

        cfg = dataclasses.replace(self.cfg, data=dataclasses.replace(self.cfg.data, batch_size=batch))
        spec = spec_from_config(cfg, self.shape, NUM_CLASSES)
        return [LevelTrainer(cfg, spec, LevelPlace(level, (0,), 0), self.device) for level in range(spec.levels)]

    def images_per_s(self, batch: int, steps: int) -> tuple[float, float, bool]:
        """Pyramid images/s: one step of every level per batch of images (the levels share nothing)."""
        trainers = self.trainers(batch)
        for trainer in trainers:
            trainer.train_step()
        sync(self.device)
        reset_peak(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            for trainer in trainers:
                trainer.train_step()
        sync(self.device)
        return steps * batch / (time.perf_counter() - start), peak_gb(self.device), False

    def fits(self, batch: int) -> bool:
        try:
            for trainer in self.trainers(batch):
                trainer.train_step()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None  # no CPU counter


def largest_batch(timer, start: int, cap: int, seconds: float) -> int:
    """The largest batch in start..cap that trains (doubling, then bisection), within `seconds` of tries."""
    deadline = time.monotonic() + seconds
    good, bad = 0, cap + 1
    batch = start
    while batch <= cap and time.monotonic() < deadline:
        if not timer.fits(batch):
            bad = batch
            break
        good, batch = batch, batch * 2
    while bad - good > max(good // 16, 1) and time.monotonic() < deadline:  # to within 1/16
        middle = (good + bad) // 2
        good, bad = (middle, bad) if timer.fits(middle) else (good, middle)
    return good


def measure_one(family: str, precision: str, device: str, smoke: bool, steps: int, search_seconds: float) -> dict:
    """One (family, precision) in this process: its JSON figures."""
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    config, shape, batch = FAMILIES[family]
    batch = 4 if smoke else batch
    with tempfile.TemporaryDirectory(prefix="family-gpu-") as tmp:
        data = synthetic_shards(family, Path(tmp) / "data")
        cfg = family_config(family, precision, batch, data, Path(tmp) / "runs", smoke)
        timer = (LevelTimer if family == "lapgan" else GanStepTimer)(cfg, shape)
        img_s, peak, graphed = timer.images_per_s(batch, steps)
        cap = 16 if smoke else 1 << 16
        most = largest_batch(timer, batch, cap, search_seconds)
    key = f"{family}_{precision}"
    return {f"{key}_img_s": round(img_s, 1), f"{key}_peak_gb": None if peak is None else round(peak, 3), f"{key}_max_batch": most,
            f"{key}_graphed": graphed, f"{key}_batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--precisions", default="no,bf16", help="trainer mixed_precision values")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny widths and batches (a CPU check of the code)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default 50 on cuda, 2 with --smoke)")
    parser.add_argument("--search-seconds", type=float, default=20.0, help="time for each largest-batch search")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for each (family, precision) child")
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (2 if args.smoke else 50)
    if args.one:
        print(json.dumps(measure_one(*args.one, args.device, args.smoke, steps, args.search_seconds)))
        return
    unknown = set(args.families.split(",")) - set(FAMILIES)
    if unknown:
        parser.error(f"--families: unknown {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    figures: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    for family in args.families.split(","):
        for precision in args.precisions.split(","):
            cmd = [sys.executable, __file__, "--one", family, precision, "--device", args.device,
                   "--steps", str(steps), "--search-seconds", str(args.search_seconds), *(["--smoke"] * args.smoke)]
            try:
                child = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
                lines = child.stdout.strip().splitlines()
                if child.returncode == 0 and lines:
                    figures.update(json.loads(lines[-1]))
                else:
                    figures[f"{family}_{precision}_error"] = (child.stderr.strip().splitlines() or ["?"])[-1][:200]
            except subprocess.TimeoutExpired:
                figures[f"{family}_{precision}_error"] = f"timed out after {args.timeout:.0f} s"
            key = f"{family}_{precision}"
            print(f"{family:>14} {precision:>4}: {figures.get(key + '_img_s', '-'):>10} img/s at batch "
                  f"{figures.get(key + '_batch', '-')}, peak {figures.get(key + '_peak_gb', '-')} GiB, largest batch "
                  f"{figures.get(key + '_max_batch', '-')}{'  ' + figures[key + '_error'] if key + '_error' in figures else ''}",
                  flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
