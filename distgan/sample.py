"""`distgan-sample`: images from an exported generator with onnxruntime, numpy and pillow only.

    distgan-sample --onnx FILE [--seed S] [--n N] [--class NAME|INDEX|all] [--psi P]
                   [--mix-seed M --mix-layer L]  (style-based models: StyleGAN2)
                   (--grid out.png | --outdir DIR | --npz FILE)
    distgan-sample --onnx FILE --seed ROW_SEED --n ROWS --mix-grid COL_SEED --cols C --mix-layer L --grid out.png
                   (the style-mixing figure: rows take their coarse styles, columns from layer L on)
    distgan-sample --onnx FILE --seed A --interpolate B --steps S (--grid strip.png | --gif walk.gif | --npz FILE)
    distgan-sample --from-png FILE [--onnx MODEL] [--grid out.png]   (a distgan PNG drawn again, bit for bit)

No torch: this is what runs where only the ONNX file is deployed (a test checks
`torch` is never imported). Seeds, classes, truncation and interpolation follow the
one convention in `distgan.runtime`, so the same arguments give the same PNG bytes as
`distgan-serve` and `export/generate.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from PIL import Image, UnidentifiedImageError

from distgan.runtime import ALL_CLASSES, PREFIX, Drawing, ModelError, OnnxGenerator, grid, to_pil, write_atomically


def write_gif(drawing: Drawing, rows: int, path: Path) -> None:
    """The walk as an animation: frame t shows every row's frame t, forward then back."""
    steps = drawing.columns
    frames = drawing.images.reshape(rows, steps, *drawing.images.shape[1:])
    order = list(range(steps)) + list(range(steps - 2, 0, -1))
    pictures = [to_pil(grid(frames[:, t])) for t in order]
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=80, loop=0)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distgan-sample",
                                     description="Sample an exported distgan generator with onnxruntime (no torch).")
    parser.add_argument("--onnx", type=Path, metavar="FILE", help="a model from distgan-export")
    parser.add_argument("--from-png", type=Path, metavar="PNG",
                        help="draw a distgan PNG again from its text chunks (the model: --onnx, else the file it "
                             "names; written to --grid, default its own file name in this folder)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the first image's seed: image i is seed + i, the same image everywhere (default 0)")
    parser.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--class", dest="class_name", metavar="NAME",
                        help="conditional models: a class name or index for every image, or 'all' (each seed in every "
                             "class, a row per seed); default: seed mod K, every class in turn")
    parser.add_argument("--psi", type=float, default=1.0,
                        help="truncation in 0..2 (default 1: none): z * psi; style-based models: "
                             "w_avg + psi (w - w_avg)")
    parser.add_argument("--mix-seed", type=int, metavar="M",
                        help="style-based models: image i takes the styles of seed M + i from --mix-layer on")
    parser.add_argument("--mix-grid", type=int, metavar="COL_SEED",
                        help="the style-mixing figure: a row per seed (--seed, --n rows), a column per seed "
                             "COL_SEED + j (--cols), each tile the row's styles below --mix-layer and the column's "
                             "from it on")
    parser.add_argument("--cols", type=int, default=4, help="with --mix-grid: columns (default 4)")
    parser.add_argument("--stages", action="store_true",
                        help="a pyramid model (LAPGAN): the stages of seed --seed's image, coarse to fine, side by "
                             "side in --grid")
    parser.add_argument("--mix-layer", type=int, metavar="L",
                        help="with --mix-seed: the first style layer taken from it (0: all; the model's num_ws: none)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--grid", type=Path, metavar="PNG", help="one grid image (with --interpolate: a row of frames "
                                                              "per image)")
    out.add_argument("--outdir", type=Path, metavar="DIR", help="one PNG per image, named by model, seed, class, psi")
    out.add_argument("--npz", type=Path, metavar="FILE", help="images (uint8 NHWC), z, seeds and labels in one .npz")
    parser.add_argument("--interpolate", type=int, metavar="SEED_B",
                        help="walk from each image to the one of SEED_B (+ i), spherically, the class held")
    parser.add_argument("--steps", type=int, default=16, help="with --interpolate: frames per walk (default 16)")
    parser.add_argument("--gif", type=Path, help="with --interpolate: the walk animated, forward and back")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: one per core)")
    args = parser.parse_args(argv)
    if args.from_png:
        if args.outdir or args.npz or args.gif or args.interpolate is not None:
            parser.error("--from-png takes its request from the PNG and writes --grid only")
        return args
    if args.onnx is None:
        parser.error("the following arguments are required: --onnx (or --from-png)")
    if args.gif and args.interpolate is None:
        parser.error("--gif needs --interpolate SEED_B")
    if args.interpolate is not None and args.outdir:
        parser.error("--interpolate writes --grid, --gif or --npz, not --outdir")
    if args.mix_grid is not None and (args.mix_seed is not None or args.interpolate is not None
                                      or args.mix_layer is None or not args.grid):
        parser.error("--mix-grid takes --mix-layer and writes --grid (not --mix-seed, --interpolate)")
    if args.mix_grid is None and (args.mix_seed is None) != (args.mix_layer is None):
        parser.error("style mixing needs both --mix-seed and --mix-layer")
    if args.mix_seed is not None and args.interpolate is not None:
        parser.error("--mix-seed draws images, not walks: leave out --interpolate")
    if args.stages and (args.mix_seed is not None or args.mix_grid is not None or args.interpolate is not None
                        or not args.grid or args.outdir or args.npz):
        parser.error("--stages draws one seed's stages into --grid (not with --mix-*, --interpolate, --outdir, "
                     "--npz)")
    if not (args.grid or args.outdir or args.npz or args.gif):
        parser.error("say where the images go: --grid, --outdir, --npz (or --gif with --interpolate)")
    return args


def png_request(path: Path) -> dict[str, str]:
    """The distgan text chunks of a PNG (without the prefix); a clear ModelError for any other file."""
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}))
    except (OSError, UnidentifiedImageError) as exc:
        raise ModelError(f"{path}: not a readable PNG ({exc})") from exc
    request = {k.removeprefix(PREFIX): v for k, v in text.items() if k.startswith(PREFIX)}
    if "model_sha256" not in request or not ("seed" in request or "seed_a" in request):
        raise ModelError(f"{path}: no distgan text chunks (model_sha256, seed or seed_a): not a PNG distgan wrote")
    return request


def draw_from_png(args: argparse.Namespace) -> tuple[OnnxGenerator, Drawing]:
    """The model and the drawing a distgan PNG records, the model's sha256 checked."""
    request = png_request(args.from_png)
    if args.onnx is None and "model_file" not in request:
        raise ModelError(f"{args.from_png}: it does not name its model file; pass --onnx MODEL")
    model = OnnxGenerator(args.onnx or Path(request["model_file"]), threads=args.threads)
    if model.sha256 != request["model_sha256"]:
        raise ModelError(f"{model.path}: sha256 {model.sha256[:12]}... is not the model that drew {args.from_png} "
                         f"(distgan.model_sha256 {request['model_sha256'][:12]}...)")
    described = request.get("class", "")
    class_name = None if not described or described.startswith("every") else described
    try:
        psi, n = float(request.get("psi", "1.0")), int(request.get("n", "1"))
        if "stages" in request:
            return model, model.stage_grid(int(request["seed"]), class_name, psi)
        if "seed_a" in request:
            return model, model.interpolate(int(request["seed_a"]), int(request["seed_b"]), int(request["steps"]),
                                            class_name, psi, n)
        return model, model.sample(int(request["seed"]), n, class_name, psi)
    except ModelError:
        raise
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{args.from_png}: malformed distgan text chunk ({exc})") from exc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_png:
        try:
            _, drawing = draw_from_png(args)
        except (FileNotFoundError, ModelError) as exc:
            print(f"distgan-sample: error: {exc}", file=sys.stderr)
            return 2
        out = args.grid or Path(drawing.name)
        write_atomically(out, drawing.png())
        print(f"wrote {out} ({len(drawing.images)} images, drawn again from {args.from_png})")
        return 0
    try:
        model = OnnxGenerator(args.onnx, threads=args.threads)
        if args.stages:
            drawing = model.stage_grid(args.seed, args.class_name, args.psi)
        elif args.mix_grid is not None:
            drawing = model.mixing_grid(args.seed, args.n, args.mix_grid, args.cols, args.mix_layer, args.class_name,
                                        args.psi)
        elif args.interpolate is None:
            drawing = model.sample(args.seed, args.n, args.class_name, args.psi, args.mix_seed, args.mix_layer)
        else:
            drawing = model.interpolate(args.seed, args.interpolate, args.steps, args.class_name, args.psi, args.n)
    except (FileNotFoundError, ModelError) as exc:
        print(f"distgan-sample: error: {exc}", file=sys.stderr)
        return 2
    what = f"{len(drawing.images)} images, seed {args.seed}"
    if args.grid:
        write_atomically(args.grid, drawing.png())
        print(f"wrote {args.grid} ({what})")
    if args.outdir:
        every = (args.class_name or "").lower() == ALL_CLASSES  # one file per (seed, class)
        for seed, label in zip(drawing.seeds.tolist(), [None] * len(drawing.seeds) if drawing.labels is None
                               else drawing.labels.tolist()):
            mix_seed = None if args.mix_seed is None else args.mix_seed + seed - args.seed
            single = model.sample(seed, 1, str(label) if every else args.class_name, args.psi, mix_seed,
                                  args.mix_layer)
            write_atomically(args.outdir / single.name, single.png())
        print(f"wrote {len(drawing.images)} images to {args.outdir}/ ({what})")
    if args.npz:
        extra = {"labels": drawing.labels} if drawing.labels is not None else {}
        args.npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.npz, images=drawing.images, z=drawing.z, seeds=drawing.seeds, **extra)
        print(f"wrote {args.npz} (images uint8 {list(drawing.images.shape)}, z, seeds{', labels' if extra else ''})")
    if args.gif:
        write_gif(drawing, len(drawing.images) // drawing.columns, args.gif)
        print(f"wrote {args.gif} ({drawing.columns} frames, seed {args.seed} -> {args.interpolate}, and back)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
