"""`POST /api/upscale`'s work: an uploaded PNG or JPEG checked from its header (format, output size) before it is
decoded, upscaled by distgan-upscale's own code (the same reading, tiles and composing, so the same pixels), the
bicubic result beside it, both as PNG, and the centre crop the page zooms.

The answer is JSON: `bicubic` and `sr` are base64 PNGs of the same size (scale x the input, alpha kept as
distgan-upscale keeps it), `crop` a box of the output (its centre, at most CROP x CROP) for a side-by-side zoom,
`filename` the name the SR PNG downloads as.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from distgan.image_runtime import upscale
from distgan.runtime import InputError
from distgan.serve.catalog import ServedUpscaler
from distgan.upscale import DEFAULT_OVERLAP, DEFAULT_TILE, compose, split_photo

FORMATS = ("PNG", "JPEG")
CROP = 64  # output pixels of the zoomed centre crop, per side
ZOOM = 4  # the page's nearest-neighbour magnification of the crop
NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def open_upload(data: bytes, scale: int, max_pixels: int) -> Image.Image:
    """The uploaded image, decoded once its header says it is a PNG/JPEG whose output fits `max_pixels`."""
    if not data:
        raise InputError("image", "the request has no body; POST the PNG or JPEG file's bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InputError("image", f"not a PNG or JPEG image ({len(data):,} bytes starting {data[:8]!r})") from None
    except Image.DecompressionBombError as exc:  # a header claiming > 2 x PIL's MAX_IMAGE_PIXELS
        raise InputError("image", f"{str(exc).splitlines()[0]} (--max-upscale-pixels {max_pixels:,})") from None
    width, height = image.size
    pixels = width * height * scale * scale
    if pixels > max_pixels:
        raise InputError("image", f"{width}x{height} upscales to {width * scale}x{height * scale} = {pixels:,} "
                                  f"pixels; the limit is {max_pixels:,} (--max-upscale-pixels)")
    try:
        image.load()
    except (OSError, SyntaxError) as exc:  # a truncated or corrupt file passes the header check
        raise InputError("image", f"cannot decode the {image.format}: {exc}") from None
    return image


def download_name(given: str | None, model: ServedUpscaler) -> str:
    """`photo.jpg` -> `photo_x4.png` (plain characters only: it goes into a download attribute)."""
    stem = NAME_CHARS.sub("-", (given or "upscaled").rsplit(".", 1)[0]).strip("-.") or "upscaled"
    return f"{stem[:80]}_x{model.model.info.scale}.png"


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def centre_crop(height: int, width: int) -> dict[str, int]:
    h, w = min(CROP, height), min(CROP, width)
    return {"x": (width - w) // 2, "y": (height - h) // 2, "width": w, "height": h, "zoom": ZOOM}


def upscale_upload(model: ServedUpscaler, data: bytes, max_pixels: int, name: str | None) -> dict[str, Any]:
    """The JSON answer for one upload (see the module's docstring)."""
    image = open_upload(data, model.model.info.scale, max_pixels)
    photo = split_photo(image, model.model.info.channels)
    s = model.model.info.scale
    height, width = photo.pixels.shape[:2]
    sr = compose(photo, upscale(model.model, photo.pixels, DEFAULT_TILE, DEFAULT_OVERLAP))
    plain = Image.fromarray(photo.pixels[..., 0] if photo.pixels.shape[-1] == 1 else photo.pixels)
    bicubic = compose(photo, np.asarray(plain.resize((width * s, height * s), Image.Resampling.BICUBIC)).reshape(
        height * s, width * s, -1))
    return {"model": model.id, "scale": s, "input": {"width": width, "height": height, "format": image.format},
            "output": {"width": width * s, "height": height * s, "mode": sr.mode},
            "bicubic": png_base64(bicubic), "sr": png_base64(sr), "crop": centre_crop(height * s, width * s),
            "filename": download_name(name, model)}
