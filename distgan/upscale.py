"""`distgan-upscale --model SR.onnx IN OUT`: photos upscaled by an exported SRGAN, on onnxruntime alone.

IN is an image or a folder of them (not recursive), OUT a file or a folder (created). Each image is
cut into overlapping tiles (`--tile`, `--overlap`; `--tile 0`: the whole image at once) blended
with linear ramps, so a 4000x3000 photo fits in memory. Alpha is kept: upscaled on its own by
bicubic. Gray images stay gray. The output is exactly scale x the input size. torch is never imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from distgan.image_runtime import ImageModelError, OnnxImageModel, tile_starts, upscale

TASK = "super-resolution"
DEFAULT_MAX_PIXELS = 40_000_000  # input pixels; at x4 the output alone is 16x as many
DEFAULT_TILE, DEFAULT_OVERLAP = 256, 16  # distgan-serve's /api/upscale uses these too
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class UpscaleError(ValueError):
    """A user error: a file that is not an image, one too large, a path that does not fit."""


@dataclass
class Photo:
    """An image split into what the model sees (uint8 [H, W, C]) and what it does not (alpha, gray)."""

    pixels: np.ndarray
    alpha: Image.Image | None
    gray: bool


def photo_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """(height, width) from the header alone, or one line saying why `path` is refused."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise UpscaleError(f"{path}: not an image this tool can read ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise UpscaleError(f"{path}: cannot read it: {exc}") from None
    if width * height > max_pixels:
        raise UpscaleError(f"{path}: {width}x{height} is more than --max-pixels {max_pixels:,}")
    return height, width


def read_photo(path: Path, channels: int) -> Photo:
    """The image at `path` (checked by `photo_size` first) for a model of `channels`."""
    try:
        with Image.open(path) as image:
            image.load()
            return split_photo(image, channels)
    except OSError as exc:  # a truncated file passes the header check
        raise UpscaleError(f"{path}: cannot decode it: {exc}") from None


def split_photo(image: Image.Image, channels: int) -> Photo:
    """A decoded image as the model sees it (gray or RGB for `channels`), its alpha and grayness kept aside."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    gray = image.mode in ("1", "L", "LA", "I", "I;16", "F")
    if has_alpha:
        image = image.convert("LA" if gray else "RGBA")
    alpha = image.getchannel("A") if has_alpha else None
    color = image.convert("L" if gray or channels == 1 else "RGB")
    if channels == 3 and color.mode == "L":
        color = color.convert("RGB")
    pixels = np.asarray(color)
    return Photo(pixels[..., None] if pixels.ndim == 2 else pixels, alpha, gray)


def compose(photo: Photo, upscaled: np.ndarray) -> Image.Image:
    """The upscaled pixels in the photo's mode again: gray stays gray, its alpha put back (bicubic)."""
    image = Image.fromarray(upscaled[..., 0] if upscaled.shape[-1] == 1 else upscaled)
    if photo.gray and image.mode == "RGB":
        image = image.convert("L")
    if photo.alpha is not None:
        image = image.convert("LA" if image.mode == "L" else "RGBA")
        image.putalpha(photo.alpha.resize(image.size, Image.Resampling.BICUBIC))
    return image


def write_photo(photo: Photo, upscaled: np.ndarray, out: Path) -> None:
    """The upscaled pixels (`compose`), written atomically in OUT's format."""
    image = compose(photo, upscaled)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise UpscaleError(f"{out}: unknown image format {out.suffix!r}; use .png or .jpg")
    if fmt == "JPEG" and image.mode in ("RGBA", "LA"):
        raise UpscaleError(f"{out}: JPEG has no alpha; write a .png to keep it")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        image.save(tmp, format=fmt)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def pairs(source: Path, target: Path) -> list[tuple[Path, Path]]:
    """(input, output) paths: a file to a file, or every image of a folder into a folder."""
    if source.is_dir():
        if target.exists() and not target.is_dir():
            raise UpscaleError(f"{target}: IN is a folder, so OUT must be one")
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UpscaleError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        target.mkdir(parents=True, exist_ok=True)
        return [(p, target / p.name) for p in files]
    if not source.is_file():
        raise UpscaleError(f"{source}: no such file or folder")
    if target.is_dir():
        return [(source, target / source.name)]
    return [(source, target)]


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    return len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distgan-upscale", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="an SRGAN export (distgan-export --onnx)")
    parser.add_argument("input", type=Path, metavar="IN", help="an image or a folder of images")
    parser.add_argument("output", type=Path, metavar="OUT", help="an image file, or a folder")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile side in input pixels; 0 = whole image")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="minimum overlap of tiles, input pixels")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger inputs")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: one per core)")
    args = parser.parse_args(argv)
    try:
        if args.tile < 0 or (args.tile and not 0 <= args.overlap < args.tile / 2):
            raise UpscaleError(f"--tile {args.tile} --overlap {args.overlap}: need tile >= 0, 0 <= overlap < tile/2")
        model = OnnxImageModel(args.model, threads=args.threads, task=TASK)
        jobs = pairs(args.input, args.output)
        sizes = [photo_size(src, args.max_pixels) for src, _ in jobs]  # refuse before any work
        total = sum(tile_count(h, w, args.tile, args.overlap) for h, w in sizes)
        with tqdm(total=total, unit="tile", desc="upscale", disable=None) as bar:
            for src, dst in jobs:
                photo = read_photo(src, model.info.channels)
                upscaled = upscale(model, photo.pixels, args.tile, args.overlap, on_tile=lambda: bar.update(1))
                write_photo(photo, upscaled, dst)
    except (UpscaleError, ImageModelError) as exc:
        print(f"distgan-upscale: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(jobs)} image(s) x{model.info.scale} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
