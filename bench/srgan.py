"""SRGAN benchmark: PSNR / SSIM of bicubic, Lanczos, SRResNet and SRGAN on held-out images; upscaling speed.

Quality: Fashion-MNIST at x2 (28x28 HR, 14x14 LR). distgan-train (one process, `model.arch=srgan`)
trains on the train split: `--pretrain` steps of the PSNR warm-up (G on the content MSE alone; D
trains beside it, unused by G) give SRResNet, the run's EMA G; the same run resumed for `--gan-steps`
more steps of the GAN phase (MSE + 1e-3 x adversarial; the VGG feature loss needs weights this
offline machine lacks, so this is the paper's SRGAN-MSE variant) gives SRGAN. The held-out images are the
first `--n` of the test split. Every LR is the on-device bicubic reduce rounded to uint8, as a
stored LR photo would be; bicubic and Lanczos up-sample it with PIL. PSNR and SSIM (piq) on the
Y channel (ITU-R BT.601, the SR literature's; gray images are their own Y) with a border of
`scale` pixels cropped. SRGAN's PSNR is expected below SRResNet's: the adversarial term trades
pixel fidelity for texture (Ledig et al. 2017, their Table 2).

Speed: the paper-size G (64 wide, 16 blocks, RGB, x4; random weights: speed does not depend on
them) upscaling one `--speed-size` square LR image: onnxruntime whole-image, onnxruntime tiled
(`--tile`, `--overlap`), torch eager (inference_mode), output megapixels per second.

    python bench/srgan.py [--pretrain 1000 --gan-steps 600 --n 1000 --grid docs/srgan_fashion_x2.png]

Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import piq
import torch
from PIL import Image

from distgan.artifacts import load_generator
from distgan.data.shards import write_shards
from distgan.data.sources import read_idx_dataset
from distgan.export.image_onnx import export_image_model
from distgan.image_runtime import OnnxImageModel, upscale
from distgan.models.srgan import SRGeneratorSpec, SRResNet, downsample
from distgan.runtime import grid

REPO = Path(__file__).resolve().parents[1]
SCALE = 2


def y_channel(images: torch.Tensor) -> torch.Tensor:
    """float [N, C, H, W] in [0, 1] -> BT.601 luma Y in [0, 1] (16..235 scaled), [N, 1, H, W]; gray as is."""
    if images.shape[1] == 1:
        return images
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def scores(sr: np.ndarray, hr: np.ndarray, border: int) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of uint8 NHWC images, on Y, `border` pixels cropped."""
    def prep(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255.0
        return y_channel(t)[..., border:-border, border:-border].clamp(0, 1)
    x, y = prep(sr), prep(hr)
    return {"psnr": float(piq.psnr(x, y, data_range=1.0, reduction="mean")),
            "ssim": float(piq.ssim(x, y, data_range=1.0, reduction="mean", downsample=False))}


def lr_images(hr: np.ndarray) -> np.ndarray:
    """uint8 NHWC HR -> uint8 NHWC LR: the training down-sampler, rounded as a stored image is."""
    t = torch.from_numpy(hr).permute(0, 3, 1, 2).float() / 127.5 - 1
    return ((downsample(t, SCALE) + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def pil_upscale(lr: np.ndarray, method: Image.Resampling) -> np.ndarray:
    out = [np.asarray(Image.fromarray(im[..., 0]).resize((im.shape[1] * SCALE, im.shape[0] * SCALE), method))
           for im in lr]
    return np.stack(out)[..., None]


def model_upscale(g: SRResNet, lr: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out = g.eval()(torch.from_numpy(lr).permute(0, 3, 1, 2).float() / 127.5 - 1)
    return ((out + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def train(shards: Path, run_dir: Path, args, steps: int) -> tuple[SRResNet, float]:
    """distgan-train (one process) on the shards to `steps` (resuming the run if it exists); its EMA G, seconds."""
    overrides = [f"data.path={shards}", f"run_dir={run_dir}", "name=sr", "model.arch=srgan", f"model.scale={SCALE}",
                 "model.hr_patch=0", f"model.ngf={args.width}", f"model.blocks={args.blocks}",
                 f"model.ndf={args.d_width}", "model.d_dense=256", f"data.batch_size={args.batch}",
                 "data.num_workers=1", f"train.steps={steps}", f"train.pretrain_steps={args.pretrain}",
                 f"train.checkpoint_every={args.pretrain}", f"train.sample_every={args.pretrain}",
                 "train.log_every=100", "loss.content=mse", "seed=0", "train.channels_last=false"]  # NCHW: faster on CPUs
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "distgan" / "train.py"), *overrides], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    generator, _ = load_generator(run_dir / "sr")
    return generator.eval(), time.perf_counter() - start


def speed(args) -> dict[str, float]:
    """Output MP/s of the paper-size G at x4: onnxruntime whole, tiled, torch eager."""
    torch.manual_seed(0)
    g = SRResNet(SRGeneratorSpec(arch="srgan", channels=3, height=96, width=96, num_classes=0, conditional=False,
                                 scale=4, ngf=64, blocks=16)).eval()
    image = np.random.default_rng(0).integers(0, 256, (args.speed_size, args.speed_size, 3), dtype=np.uint8)
    megapixels = (args.speed_size * 4) ** 2 / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sr.onnx"
        export_image_model(g, path, channels=3, metadata={"task": "super-resolution", "scale": 4,
                                                          "family": "srgan", "step": 0})
        model = OnnxImageModel(path)
        runs = {"onnx_whole": lambda: upscale(model, image, tile=0),
                "onnx_tiled": lambda: upscale(model, image, tile=args.tile, overlap=args.overlap)}
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1

        def eager() -> None:
            with torch.inference_mode():
                g(x)
        runs["torch_eager"] = eager
        out = {}
        for name, run in runs.items():
            run()  # warm-up
            best = min(_timed(run) for _ in range(args.repeats))
            out[name] = megapixels / best
    return out


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--pretrain", type=int, default=1000)
    parser.add_argument("--gan-steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=32, help="G width (the paper: 64)")
    parser.add_argument("--blocks", type=int, default=4, help="G residual blocks (the paper: 16)")
    parser.add_argument("--d-width", type=int, default=16)
    parser.add_argument("--n", type=int, default=1000, help="held-out test images")
    parser.add_argument("--speed-size", type=int, default=128, help="LR side for the speed figures")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", type=Path, default=None, help="write LR | bicubic | SRResNet | SRGAN | HR crops")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    raw = read_idx_dataset("fashion-mnist", args.data)
    hr = raw.splits["test"].load(np.arange(args.n))
    lr = lr_images(hr)
    results = {"bicubic": pil_upscale(lr, Image.Resampling.BICUBIC),
               "lanczos": pil_upscale(lr, Image.Resampling.LANCZOS)}
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_shards(raw, shards)
        g, seconds["srresnet"] = train(shards, Path(tmp), args, args.pretrain)  # the warm-up alone: SRResNet
        results["srresnet"] = model_upscale(g, lr)
        g, seconds["srgan"] = train(shards, Path(tmp), args, args.pretrain + args.gan_steps)  # resumed: the GAN
        results["srgan"] = model_upscale(g, lr)
    table = {name: scores(images, hr, border=SCALE) for name, images in results.items()}
    print(f"Fashion-MNIST test[:{args.n}] x{SCALE}, Y channel, border {SCALE} cropped (piq)")
    print(f"{'method':10s} {'PSNR dB':>8s} {'SSIM':>7s}")
    for name, row in table.items():
        print(f"{name:10s} {row['psnr']:8.2f} {row['ssim']:7.4f}")
    print(f"train seconds: SRResNet {seconds['srresnet']:.0f} ({args.pretrain} steps), "
          f"SRGAN {seconds['srgan']:.0f} (+{args.gan_steps} steps)")
    if args.grid:
        pick = hr[:8]
        lr_big = np.repeat(np.repeat(lr[:8], SCALE, axis=1), SCALE, axis=2)
        rows = np.concatenate([lr_big, results["bicubic"][:8], results["srresnet"][:8], results["srgan"][:8], pick])
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        sheet = grid(rows, columns=8)[..., 0]
        Image.fromarray(sheet).resize((sheet.shape[1] * 4, sheet.shape[0] * 4), Image.Resampling.NEAREST).save(args.grid)
    mps = speed(args)
    print(f"x4 paper-size G on a {args.speed_size}x{args.speed_size} LR image, output MP/s: "
          + ", ".join(f"{k} {v:.3f}" for k, v in mps.items()))
    print(json.dumps({**{f"psnr_{k}": round(v["psnr"], 3) for k, v in table.items()},
                      **{f"ssim_{k}": round(v["ssim"], 4) for k, v in table.items()},
                      **{f"mps_{k}": round(v, 4) for k, v in mps.items()},
                      "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
                      "steps": {"pretrain": args.pretrain, "gan": args.gan_steps}, "n": args.n,
                      "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads",
                      "date": date.today().isoformat()}))


if __name__ == "__main__":
    main()
