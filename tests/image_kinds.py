"""Image files of every kind a real folder holds, each with the reference pixels a correct decoder gives.

Used by tests/test_data_prepare.py and bench/prepare.py (the correctness table). Each good kind writes
one SIDExSIDE file and returns the uint8 RGB array it must decode to: the 8-bit image it was made
from (16-bit: v = 257 * v8 + noise below half a step; EXIF: the upright image; RGBA: straight-alpha
compositing on white by its definition; palette/GIF: the palette entries; gray: the value thrice).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageCms

SIDE = 16
WHITE = 255


def png_bytes(array: np.ndarray, bit_depth: int, colour_type: int, width: int | None = None,
              height: int | None = None) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB); width/height override the header only."""
    h, w = array.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + array[y].astype(dtype).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width or w, height or h, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _rgb(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def plain_rgb(folder: Path, rng) -> tuple[str, np.ndarray]:
    image = _rgb(rng)
    Image.fromarray(image).save(folder / "plain.png")
    return "plain.png", image


def gray_16bit(folder: Path, rng) -> tuple[str, np.ndarray]:
    gray = np.arange(SIDE * SIDE).reshape(SIDE, SIDE).astype(np.uint8)  # black to white (16x16 = 256 steps)
    wide = gray.astype(np.int64) * 257 + rng.integers(-128, 129, gray.shape)
    (folder / "scan-16bit-gray.png").write_bytes(png_bytes(np.clip(wide, 0, 65535), 16, 0))
    return "scan-16bit-gray.png", np.repeat(gray[..., None], 3, axis=2)


def rgb_16bit(folder: Path, rng) -> tuple[str, np.ndarray]:
    image = _rgb(rng)
    (folder / "scan-16bit-rgb.png").write_bytes(png_bytes(image.astype(np.int64) * 257, 16, 2))
    return "scan-16bit-rgb.png", image


def exif_rotated(folder: Path, rng) -> tuple[str, np.ndarray]:
    upright = _rgb(rng)
    upright[:4] = 0  # a dark top band: a lost rotation is plain to see
    stored = Image.fromarray(np.rot90(upright, 1))  # orientation 6: the viewer turns it 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "phone.png", exif=exif)
    return "phone.png", upright


def rgba(folder: Path, rng) -> tuple[str, np.ndarray]:
    colour = _rgb(rng)
    alpha = rng.integers(0, 256, (SIDE, SIDE, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([colour, alpha], axis=2), "RGBA").save(folder / "logo.png")
    a = alpha.astype(np.float64)
    reference = np.round((colour * a + WHITE * (255 - a)) / 255).astype(np.uint8)
    return "logo.png", reference


def cmyk(folder: Path, rng) -> tuple[str, np.ndarray]:
    image = _rgb(rng)
    Image.fromarray(image).convert("CMYK").save(folder / "print.tif")  # K = 0: the inverse is exact
    return "print.tif", image


def icc_srgb(folder: Path, rng) -> tuple[str, np.ndarray]:
    image = _rgb(rng)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(image).save(folder / "tagged-srgb.png", icc_profile=profile)
    return "tagged-srgb.png", image


def palette(folder: Path, rng) -> tuple[str, np.ndarray]:
    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (SIDE, SIDE), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(colours.tobytes())
    image.save(folder / "indexed.png")
    return "indexed.png", colours[index]


def animated(folder: Path, rng) -> tuple[str, np.ndarray]:
    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    frames = []
    for _ in range(3):
        frame = Image.fromarray(rng.integers(0, 16, (SIDE, SIDE), dtype=np.uint8), "P")
        frame.putpalette(colours.tobytes())
        frames.append(frame)
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, optimize=False)
    return "anim.gif", colours[np.asarray(frames[0])]


def gray(folder: Path, rng) -> tuple[str, np.ndarray]:
    values = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    Image.fromarray(values, "L").save(folder / "gray.png")
    return "gray.png", np.repeat(values[..., None], 3, axis=2)


GOOD_KINDS: dict[str, Callable] = {
    "plain RGB": plain_rgb, "16-bit gray": gray_16bit, "16-bit RGB": rgb_16bit, "EXIF-rotated": exif_rotated,
    "RGBA": rgba, "CMYK": cmyk, "sRGB ICC profile": icc_srgb, "palette": palette, "animated GIF": animated,
    "gray in RGB set": gray,
}


def bad_files(folder: Path, rng) -> dict[str, str]:
    """Files no decoder can use: name -> a word the refusal's reason must contain."""
    (folder / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    (folder / "huge.png").write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 8, 0, width=40000, height=40000))
    (folder / "fake.jpg").write_text("this is a text file with an image's suffix\n")
    return {"empty.png": "empty", "truncated.jpg": "truncated", "huge.png": "MAX_IMAGE_PIXELS",
            "fake.jpg": "not an image"}


def skipped_files(folder: Path) -> dict[str, str]:
    """Entries listing skips without decoding: name -> reason."""
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._plain.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    os.symlink(".", folder / "again")  # a folder that contains itself
    os.mkfifo(folder / "pipe.png")  # reading it would wait for a writer forever
    return {"notes.txt": "not an image file (.txt)", ".DS_Store": "hidden", "._plain.png": "hidden",
            "loop-a.png": "symlink loop", "loop-b.png": "symlink loop", "again": "symlink loop (folder already listed)",
            "pipe.png": "not a regular file"}


def messy_folder(folder: Path, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Every kind at once: (good file -> reference, bad file -> reason word, skipped entry -> reason);
    plain.png also has an exact duplicate, plain_copy.png."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    good = dict(builder(folder, rng) for builder in GOOD_KINDS.values())
    (folder / "plain_copy.png").write_bytes((folder / "plain.png").read_bytes())
    good["plain_copy.png"] = good["plain.png"]
    return good, bad_files(folder, rng), skipped_files(folder)
