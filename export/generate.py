"""Images from a distgan generator exported to ONNX, with onnxruntime, numpy and pillow only.

    pip install -r requirements.txt
    python generate.py generator.onnx --n 16 --seed 0 --out samples.png [--class Sandal] [--psi 0.7]

Or from Python:

    from runtime import OnnxGenerator
    g = OnnxGenerator("generator.onnx")
    images = g.sample(seed=0, n=16).images     # uint8 [16, H, W, C]

Copy this file with runtime.py (distgan's own `distgan/runtime.py`, which this directory
links to) next to the model: everything else comes from the model's metadata_props. The
same arguments give the same PNG bytes as `distgan-sample` and `distgan-serve`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import ModelError, OnnxGenerator


def main() -> int:
    parser = argparse.ArgumentParser(description="Sample a distgan ONNX generator (no torch needed).")
    parser.add_argument("model", help="generator.onnx from distgan-export")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="the first image's seed; image i is seed + i")
    parser.add_argument("--class", dest="class_name", help="conditional models: a class name or index, or 'all'")
    parser.add_argument("--psi", type=float, default=1.0, help="truncation in 0..2 (1: none)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="grid image (PNG)")
    args = parser.parse_args()
    try:
        generator = OnnxGenerator(args.model)
        drawing = generator.sample(args.seed, args.n, args.class_name, args.psi)
    except (FileNotFoundError, ModelError) as exc:
        print(f"generate.py: error: {exc}", file=sys.stderr)
        return 2
    args.out.write_bytes(drawing.png())
    info = generator.info
    print(f"wrote {args.out}: {len(drawing.images)} images of {info.height}x{info.width}, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
