"""Geometry: an upright image of any size -> SIZExSIZE (`--transform`), and the source's aspect ratios.

center-crop        the largest centred square (or a fixed `crop` side), Lanczos resize (StyleGAN's)
center-crop-wide   the largest centred 2:1 rectangle, resized to SIZE x SIZE/2 and letterboxed on the
                   background colour (StyleGAN's center-crop-wide, for wide scenes such as cars)
pad                the whole image, long side resized to SIZE, centred on the background colour
resize             the whole image stretched to SIZExSIZE (aspect ratio not kept)
None               nothing: the image must already be SIZExSIZE
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from distgan.data.manifest import DataError

TRANSFORMS = ("center-crop", "center-crop-wide", "pad", "resize")
LANCZOS = Image.Resampling.LANCZOS

# Aspect ratio (width / height) bins of the report's histogram: upper edges and labels.
ASPECT_EDGES = (0.5, 0.7, 0.9, 1.12, 1.45, 2.1)
ASPECT_LABELS = ("< 1:2", "1:2 - 2:3", "2:3 - 9:10", "square (+-10%)", "4:3", "3:2 - 2:1", "> 2:1")


def _crop_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box of aspect `aspect` (width / height)."""
    w, h = (width, round(width / aspect)) if width / height <= aspect else (round(height * aspect), height)
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _letterbox(image: Image.Image, size: int, background: tuple[int, int, int]) -> Image.Image:
    fill = background if image.mode == "RGB" else round(0.299 * background[0] + 0.587 * background[1]
                                                        + 0.114 * background[2])
    canvas = Image.new(image.mode, (size, size), fill)
    canvas.paste(image, ((size - image.size[0]) // 2, (size - image.size[1]) // 2))
    return canvas


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, LANCZOS)


def fit(image: Image.Image, transform: str | None, size: int, background: tuple[int, int, int],
        crop: int | None = None) -> Image.Image:
    """`image` as SIZExSIZE by `transform`; a wrong size without a transform is an error naming both."""
    width, height = image.size
    if transform is None:
        if (width, height) != (size, size):
            raise DataError(f"image is {width}x{height}, expected {size}x{size} "
                            f"(pass --transform center-crop, pad or resize)")
        return image
    if transform == "center-crop":
        if crop is not None:
            if crop > min(width, height):
                raise DataError(f"crop {crop} is larger than the {width}x{height} image")
            left, top = (width - crop) // 2, (height - crop) // 2
            return _resized(image.crop((left, top, left + crop, top + crop)), (size, size))
        return _resized(image.crop(_crop_box(width, height, 1.0)), (size, size))
    if transform == "center-crop-wide":
        wide = _resized(image.crop(_crop_box(width, height, 2.0)), (size, size // 2))
        return _letterbox(wide, size, background)
    if transform == "pad":
        scale = size / max(width, height)
        inner = (max(1, round(width * scale)), max(1, round(height * scale)))
        return _letterbox(_resized(image, inner), size, background)
    if transform == "resize":
        return _resized(image, (size, size))
    raise DataError(f"--transform {transform!r}: choose one of {', '.join(TRANSFORMS)}")


def aspect_histogram(widths: np.ndarray, heights: np.ndarray) -> dict[str, int]:
    """How many sources fall in each aspect-ratio bin (width / height), so a user sees what a crop cuts."""
    ratios = widths / np.maximum(heights, 1)
    counts = np.bincount(np.searchsorted(ASPECT_EDGES, ratios, side="right"), minlength=len(ASPECT_LABELS))
    return {label: int(n) for label, n in zip(ASPECT_LABELS, counts)}


def center_crop_kept(widths: np.ndarray, heights: np.ndarray) -> float:
    """The mean share of each source's pixels a center crop keeps (1.0 for a square set)."""
    if not len(widths):
        return 1.0
    side = np.minimum(widths, heights).astype(np.float64)
    return float(np.mean(side * side / (widths.astype(np.float64) * heights)))
