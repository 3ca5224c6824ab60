"""Images from a distgan generator exported to ONNX, with onnxruntime, numpy and pillow only.

    pip install -r requirements.txt
    python generate.py generator.onnx --n 16 --seed 0 --out samples.png [--class Sandal]

Or from Python:

    from generate import Generator
    g = Generator("generator.onnx")
    images = g.generate(n=16, seed=0)          # uint8 [16, H, W, C]

Self-contained on purpose (copy this file next to the model): everything it needs is
in the model's metadata_props, under the keys `distgan.*`.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import onnxruntime as ort
from PIL import Image


class Generator:
    def __init__(self, path: str):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "distgan.nz" not in meta:
            raise ValueError(f"{path}: no distgan.* metadata; export it with distgan-export")
        self.nz = int(meta["distgan.nz"])
        self.shape = tuple(int(meta[f"distgan.{k}"]) for k in ("height", "width", "channels"))
        self.classes = json.loads(meta["distgan.class_names"])
        self.uint8_output = meta["distgan.output_dtype"] == "uint8"

    def generate(self, n: int, seed: int = 0, class_name: str | None = None) -> np.ndarray:
        """n images, uint8 [n, H, W, C]; the same seed gives the same images."""
        z = np.random.default_rng(seed).standard_normal((n, self.nz), dtype=np.float32)
        feeds = {"z": z}
        if self.classes:
            if class_name is None:
                feeds["labels"] = np.arange(n, dtype=np.int64) % len(self.classes)
            else:
                lowered = [c.lower() for c in self.classes]
                if class_name.lower() not in lowered:
                    raise ValueError(f"unknown class {class_name!r}; valid: {', '.join(self.classes)}")
                feeds["labels"] = np.full(n, lowered.index(class_name.lower()), np.int64)
        elif class_name is not None:
            raise ValueError("this model is unconditional: it has no classes")
        images = self.session.run(["images"], feeds)[0]
        if self.uint8_output:  # already uint8 [n, H, W, C]
            return images
        # float [n, C, H, W] in [-1, 1] -> uint8 [n, H, W, C]
        return np.round(np.clip((images + 1.0) * 127.5, 0, 255)).astype(np.uint8).transpose(0, 2, 3, 1)


def save_grid(images: np.ndarray, path: str, padding: int = 2) -> None:
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i, image in enumerate(images):
        y, x = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        canvas[y:y + h, x:x + w] = image
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description="Sample a distgan ONNX generator (no torch needed).")
    parser.add_argument("model", help="generator.onnx from distgan-export")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class", dest="class_name", help="conditional models: a class name")
    parser.add_argument("--out", default="samples.png", help="grid image (PNG)")
    args = parser.parse_args()
    generator = Generator(args.model)
    save_grid(generator.generate(args.n, args.seed, args.class_name), args.out)
    print(f"wrote {args.out}: {args.n} images of {generator.shape[0]}x{generator.shape[1]}, seed {args.seed}")


if __name__ == "__main__":
    main()
