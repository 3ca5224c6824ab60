"""`distgan-sample`: images from an exported generator with onnxruntime, numpy and pillow only.

    distgan-sample --onnx FILE --n 64 --seed 0 (--grid out.png | --outdir DIR | --npz FILE)
                   [--class sandal] [--interpolate STEPS --gif out.gif]

No torch: this is what runs where only the ONNX file is deployed (a test checks
`torch` is never imported). The same seed gives the same images; nz, image shape,
output format and class names come from the model's metadata.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from distgan.runtime import ModelError, OnnxGenerator


def grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 [B, H, W, C] -> one uint8 [rows * (H + p) + p, cols * (W + p) + p, C] image, black between tiles."""
    b, h, w, c = images.shape
    cols = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    out = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i, image in enumerate(images):
        y, x = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        out[y:y + h, x:x + w] = image
    return out


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation per row: stays on the shell where N(0, I) latents live, unlike a straight line."""
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    omega = np.arccos(np.clip(np.sum(a / na * (b / nb), axis=1, keepdims=True), -1.0, 1.0))
    so = np.sin(omega)
    safe = np.where(so < 1e-6, 1.0, so)
    mixed = np.where(so < 1e-6, (1 - t) * a + t * b, (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / safe)
    return mixed.astype(np.float32)


def interpolation_frames(model: OnnxGenerator, z: np.ndarray, labels: np.ndarray | None, seed: int,
                         steps: int) -> list[np.ndarray]:
    """Grids walking from the latents of `seed` to those of `seed + 1` and back, `steps` frames each way."""
    target = model.latents(len(z), seed + 1)
    ts = [i / steps for i in range(steps)]
    path = [slerp(z, target, t) for t in ts] + [slerp(target, z, t) for t in ts]
    return [grid(model.images(frame, labels)) for frame in path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distgan-sample",
                                     description="Sample an exported distgan generator with onnxruntime (no torch).")
    parser.add_argument("--onnx", type=Path, required=True, metavar="FILE", help="a model from distgan-export")
    parser.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="latent seed: the same seed gives the same images")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--grid", type=Path, metavar="PNG", help="one grid image")
    out.add_argument("--outdir", type=Path, metavar="DIR", help="one PNG per image: DIR/00000.png ...")
    out.add_argument("--npz", type=Path, metavar="FILE", help="images (uint8 NHWC), z and labels in one .npz")
    parser.add_argument("--class", dest="class_name", metavar="NAME",
                        help="conditional models: this class for every image (default: every class in turn)")
    parser.add_argument("--interpolate", type=int, metavar="STEPS",
                        help="with --gif: frames per leg of a loop from seed's latents to seed+1's and back")
    parser.add_argument("--gif", type=Path, help="with --interpolate: the animated grid")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: one per core)")
    args = parser.parse_args(argv)
    if (args.interpolate is None) != (args.gif is None):
        parser.error("--interpolate STEPS and --gif FILE go together")
    if not (args.grid or args.outdir or args.npz or args.gif):
        parser.error("say where the images go: --grid, --outdir, --npz (and/or --interpolate with --gif)")
    if args.n < 1 or (args.interpolate is not None and args.interpolate < 1):
        parser.error("--n and --interpolate must be >= 1")
    try:
        model = OnnxGenerator(args.onnx, threads=args.threads)
        if args.class_name is not None:
            labels = np.full(args.n, model.class_id(args.class_name), np.int64)
        else:
            labels = model.default_labels(args.n)
        z = model.latents(args.n, args.seed)
        images = model.images(z, labels)
    except (FileNotFoundError, ModelError) as exc:
        parser.exit(2, f"distgan-sample: error: {exc}\n")
    if args.grid:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        to_pil(grid(images)).save(args.grid)
        print(f"wrote {args.grid} ({args.n} images, seed {args.seed})")
    if args.outdir:
        args.outdir.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            to_pil(image).save(args.outdir / f"{i:05d}.png")
        print(f"wrote {args.n} images to {args.outdir}/ (seed {args.seed})")
    if args.npz:
        args.npz.parent.mkdir(parents=True, exist_ok=True)
        extra = {"labels": labels} if labels is not None else {}
        np.savez(args.npz, images=images, z=z, **extra)
        print(f"wrote {args.npz} (images uint8 {list(images.shape)}, z{', labels' if extra else ''})")
    if args.gif:
        frames = [to_pil(f) for f in interpolation_frames(model, z, labels, args.seed, args.interpolate)]
        args.gif.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(args.gif, save_all=True, append_images=frames[1:], duration=80, loop=0)
        print(f"wrote {args.gif} ({len(frames)} frames, seed {args.seed} -> {args.seed + 1} and back)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
