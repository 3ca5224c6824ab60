"""One image file -> the right 8-bit pixels: one function per kind of image a real folder holds.

Every step says what it did through `Kinds`, so the prepare report can count what was converted
(16-bit, EXIF-rotated, alpha, CMYK, palette, animated, gray <-> RGB) instead of doing it silently.
A file that cannot give defensible pixels raises `BadImage` with the reason the report shows.
"""

from __future__ import annotations

import enum
import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from distgan.data.manifest import DataError
from distgan.data.transforms import fit

SRGB = ImageCms.createProfile("sRGB")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
REDUCING_GAP = 3  # a JPEG is decoded at reduced scale only while it keeps 3x the pixels the output needs


class BadImage(Exception):
    """This file gives no image: the message is the reason the report records."""


class Kinds(enum.IntFlag):
    """What had to be done to a file's pixels (a bit each, counted in the report)."""

    SIXTEEN_BIT = enum.auto()   # 16 bits per sample, scaled to 8
    EXIF_ROTATED = enum.auto()  # EXIF orientation applied
    ALPHA = enum.auto()         # transparent pixels composited on the background
    CMYK = enum.auto()          # CMYK converted to RGB
    PALETTE = enum.auto()       # palette (indexed) image expanded
    ICC = enum.auto()           # converted to sRGB through its embedded ICC profile
    ANIMATED = enum.auto()      # the first frame of several
    GRAY_TO_RGB = enum.auto()   # gray image in an RGB set
    RGB_TO_GRAY = enum.auto()   # colour image in a gray set (--channels 1)
    OTHER_MODE = enum.auto()    # e.g. YCbCr, LAB, HSV, 1-bit: converted by Pillow


@dataclass(frozen=True)
class DecodeOptions:
    """How every file of a dataset becomes SIZExSIZE x channels (see README, "Folders")."""

    size: int
    channels: int
    transform: str | None = None  # None: the image must already be SIZExSIZE
    background: tuple[int, int, int] = (255, 255, 255)
    crop: int | None = None  # center-crop only: a fixed square side instead of the largest one


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # uint8 [size, size, channels]
    width: int  # the source's size, upright
    height: int
    kinds: Kinds
    frames: int  # 1 unless animated
    transparent: bool  # some pixel had alpha < 255 (refused under --alpha error)


def open_image(data: bytes) -> Image.Image:
    """Pillow's image from a file's bytes; decompression bombs are refused at PIL's limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels"
        raise BadImage(f"decompression bomb refused: {size}, over PIL's limit "
                       f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read" if data else "empty file (0 bytes)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"cannot read the image header ({exc})") from None


def reduce_jpeg(image: Image.Image, options: DecodeOptions) -> bool:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale (DCT scaling, `Image.draft`) when even then it
    keeps REDUCING_GAP x the pixels the transform needs: about half the decode's CPU for a photo
    much larger than SIZE, within 0.3 levels of the full decode on average (BENCHMARKS.md).
    Pillow's own `reducing_gap` rule; never with a fixed crop (its side is in source pixels)."""
    if image.format != "JPEG" or options.transform is None or options.crop is not None:
        return False
    width, height = image.size
    scale = REDUCING_GAP * max(options.size / width, options.size / height)  # no transform scales by more
    if scale >= 1:
        return False
    image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
    return image.size != (width, height)


def first_frame(image: Image.Image) -> int:
    """The number of frames; the image stays on frame 0 (animated GIF/PNG/WebP, multi-page TIFF)."""
    frames = int(getattr(image, "n_frames", 1))
    if frames > 1:
        image.seek(0)
    return frames


def upright(image: Image.Image) -> tuple[Image.Image, bool]:
    """EXIF orientation applied (phone photos): the image as the camera's user saw it."""
    orientation = image.getexif().get(0x0112, 1)
    if orientation in (None, 1):
        return image, False
    return ImageOps.exif_transpose(image), True


def is_sixteen_bit(image: Image.Image) -> bool:
    """16 bits per sample: Pillow's I;16*/I modes, or a 16-bit RGB(A) PNG it reads as RGB(A)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return True
    # A tile is (codec, extents, offset, args); args is the raw mode, or a tuple starting with it.
    raw_modes = (tile[3][0] if isinstance(tile[3], tuple) and tile[3] else tile[3]
                 for tile in getattr(image, "tile", []) if len(tile) > 3)
    return any(";16" in str(raw_mode) for raw_mode in raw_modes)


def scale_sixteen_bit(image: Image.Image) -> Image.Image:
    """16-bit gray -> 8-bit by round(v / 257), so 65535 -> 255 (Pillow's convert("L") clips at 255).

    Mode "I" (32-bit) holds 16-bit data from PNG/TIFF readers; values are clipped to 0..65535 first.
    16-bit RGB(A) PNGs Pillow already reads as 8-bit through their high byte (v >> 8, within 1 of
    round(v / 257)), so they pass through.
    """
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def expand_palette(image: Image.Image) -> Image.Image:
    """Palette images -> RGBA when the palette has transparency, else RGB."""
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "PA":
        return image.convert("RGBA")
    return image


def to_srgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """CMYK and RGB with an embedded ICC profile -> sRGB through it; CMYK without one: Pillow's formula.

    Returns whether a profile was applied. A profile LittleCMS cannot read is ignored (Pillow's
    conversion then), as browsers do.
    """
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, SRGB, outputMode="RGB"), True
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return (image.convert("RGB") if image.mode == "CMYK" else image), False


def flatten_alpha(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, bool]:
    """Alpha composited on `background` (straight alpha, rounded); returns RGB and whether any pixel was
    not opaque."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
    alpha = rgba[..., 3:]
    back = np.asarray(background, dtype=np.uint32)
    out = (rgba[..., :3] * alpha + back * (255 - alpha) + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB"), bool((alpha < 255).any())


def to_channels(image: Image.Image, channels: int) -> tuple[Image.Image, Kinds]:
    """RGB or gray as the dataset wants (gray -> RGB repeats the value; RGB -> gray is ITU-R 601 luma)."""
    kinds = Kinds(0)
    if image.mode not in ("L", "RGB"):
        kinds |= Kinds.OTHER_MODE
        image = image.convert("L" if image.mode in ("1", "I", "F") else "RGB")
    if channels == 3 and image.mode == "L":
        return image.convert("RGB"), kinds | Kinds.GRAY_TO_RGB
    if channels == 1 and image.mode == "RGB":
        return image.convert("L"), kinds | Kinds.RGB_TO_GRAY
    return image, kinds


def decode(data: bytes, options: DecodeOptions) -> Decoded:
    """A file's bytes -> the dataset's pixels, with what was done on the way."""
    image = open_image(data)
    frames = first_frame(image)
    kinds = Kinds.ANIMATED if frames > 1 else Kinds(0)
    sixteen = is_sixteen_bit(image)
    stored = image.size  # the source's size, before any reduced-scale decode
    try:
        reduce_jpeg(image, options)
        image.load()
        turned = image.size
        image, rotated = upright(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow's truncated/corrupt data errors
        raise BadImage(f"cannot decode ({exc})") from None
    if image.mode == "F":
        raise BadImage("32-bit float image: no defined 8-bit scale")
    kinds |= (Kinds.SIXTEEN_BIT if sixteen else 0) | (Kinds.EXIF_ROTATED if rotated else 0)
    kinds |= Kinds.CMYK if image.mode == "CMYK" else 0
    kinds |= Kinds.PALETTE if image.mode in ("P", "PA") else 0
    image = expand_palette(scale_sixteen_bit(image))
    image, profiled = to_srgb(image)
    kinds |= Kinds.ICC if profiled else 0
    transparent = False
    if image.mode in ALPHA_MODES:
        gray = image.mode in ("LA", "La")
        image, transparent = flatten_alpha(image, options.background)
        image = image.convert("L") if gray else image
        kinds |= Kinds.ALPHA if transparent else 0
    image, converted = to_channels(image, options.channels)
    width, height = stored if image.size == turned else stored[::-1]
    try:
        pixels = np.asarray(fit(image, options.transform, options.size, options.background, options.crop))
    except DataError as exc:  # a wrong size without --transform: this file's reason
        raise BadImage(str(exc)) from None
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return Decoded(pixels, width, height, kinds | converted, frames, transparent)
