"""Image folders and aligned CelebA -> `RawDataset`: files listed up front, decoded shard by shard in parallel."""

from __future__ import annotations

import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from distgan.data.manifest import DataError
from distgan.data.sources import RawDataset, RawSplit

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def center_crop_resize(image: Image.Image, crop: int | None, size: int) -> Image.Image:
    """Center-crop a `crop` square (None: the largest one), then resize to `size` (Lanczos)."""
    w, h = image.size
    side = min(w, h) if crop is None else crop
    if side > min(w, h):
        raise DataError(f"crop {side} is larger than the {w}x{h} image")
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


@lru_cache(maxsize=4)
def _open_zip(path: str) -> zipfile.ZipFile:
    """One open archive per worker process: re-reading CelebA's 200k-entry index per image is slow."""
    return zipfile.ZipFile(path)


def _decode_one(source: str | tuple[str, str], size: int, channels: int, crop: str) -> np.ndarray:
    """Decode one image in a worker. `source` is a path or (zip path, member)."""
    name = source if isinstance(source, str) else f"{source[0]}:{source[1]}"
    try:
        if isinstance(source, str):
            image = Image.open(source)
        else:
            image = Image.open(_open_zip(source[0]).open(source[1]))
        image.load()
    except Exception as exc:  # PIL raises many types for bad files
        raise DataError(f"{name}: cannot decode image ({exc})") from exc
    image = image.convert("L" if channels == 1 else "RGB")
    if crop == "strict":
        if image.size != (size, size):
            raise DataError(
                f"{name}: image is {image.size[0]}x{image.size[1]}, expected {size}x{size} "
                f"(pass --resize to center-crop and resize)"
            )
    else:
        image = center_crop_resize(image, None if crop == "max" else int(crop), size)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def _decode_many(
    sources: Sequence, size: int, channels: int, crop: str, indices: np.ndarray
) -> np.ndarray:
    decode = partial(_decode_one, size=size, channels=channels, crop=crop)
    chosen = [sources[i] for i in indices]
    workers = min(os.cpu_count() or 1, 8)
    if workers == 1 or len(chosen) < 64:
        return np.stack([decode(s) for s in chosen])
    with ProcessPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(decode, chosen, chunksize=64)))


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def read_folder_dataset(
    src: Path, size: int, channels: int, resize: bool, test_fraction: float, seed: int
) -> RawDataset:
    """Any tree of images; the class is the first sub-folder when there are sub-folders."""
    if not src.is_dir():
        raise DataError(f"{src}: not a directory")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{src}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    top_level = [f for f in files if f.parent == src]
    nested = [f for f in files if f.parent != src]
    if top_level and nested:
        raise DataError(
            f"{src}: images both at the top level (e.g. {top_level[0].name}) and in sub-folders "
            f"(e.g. {nested[0].relative_to(src)}); use one layout: flat, or one folder per class"
        )
    if nested:
        classes = sorted({f.relative_to(src).parts[0] for f in files})
        labels = np.array([classes.index(f.relative_to(src).parts[0]) for f in files], np.int64)
    else:
        classes, labels = [], np.full(len(files), -1, np.int64)
    crop = "max" if resize else "strict"
    sources = [str(f) for f in files]
    train, test = _split_indices(len(files), test_fraction, seed)
    splits = {}
    for split, idx in (("train", train), ("test", test)):
        if len(idx):
            subset = [sources[i] for i in idx]
            splits[split] = RawSplit(
                labels=labels[idx], load=partial(_decode_many, subset, size, channels, crop)
            )
    return RawDataset(
        name=src.name, height=size, width=size, channels=channels, classes=classes,
        splits=splits, source={"kind": "folder", "path": str(src)},
        preprocessing=(f"center crop of the largest square, Lanczos resize to {size}"
                       if resize else f"none: images must be {size}x{size}"),
    )


CELEBA_SPLITS = {"0": "train", "1": "valid", "2": "test"}


def read_celeba_dataset(
    src: Path, partition: Path | None, size: int, crop: int
) -> RawDataset:
    """Aligned CelebA (img_align_celeba/ or img_align_celeba.zip), split by list_eval_partition.txt."""
    if zipfile.is_zipfile(src) if src.is_file() else False:
        with zipfile.ZipFile(src) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(".jpg"))
        by_file = {os.path.basename(n): (str(src), n) for n in names}
    elif src.is_dir():
        root = src / "img_align_celeba" if (src / "img_align_celeba").is_dir() else src
        by_file = {p.name: str(p) for p in sorted(root.glob("*.jpg"))}
    else:
        raise DataError(f"{src}: neither a directory of CelebA images nor img_align_celeba.zip")
    if not by_file:
        raise DataError(f"{src}: no .jpg images found")
    if partition is None:
        for candidate in (src.parent / "list_eval_partition.txt", src / "list_eval_partition.txt"):
            if candidate.is_file():
                partition = candidate
                break
    split_of: dict[str, str] = {}
    if partition is not None:
        for lineno, line in enumerate(Path(partition).read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in CELEBA_SPLITS:
                raise DataError(f"{partition}:{lineno}: expected '<file>.jpg 0|1|2', got {line!r}")
            split_of[parts[0]] = CELEBA_SPLITS[parts[1]]
        missing = [f for f in split_of if f not in by_file]
        if missing:
            raise DataError(
                f"{partition} lists {len(missing)} images not found in {src} (e.g. {missing[0]})"
            )
    names = sorted(split_of) if split_of else sorted(by_file)
    splits = {}
    for split in ("train", "valid", "test"):
        chosen = [n for n in names if split_of.get(n, "train") == split]
        if chosen:
            sources = [by_file[n] for n in chosen]
            splits[split] = RawSplit(
                labels=np.full(len(chosen), -1, np.int64),
                load=partial(_decode_many, sources, size, 3, str(crop)),
            )
    return RawDataset(
        name="celeba", height=size, width=size, channels=3, classes=[], splits=splits,
        source={"kind": "celeba", "path": str(src), "partition": str(partition or "")},
        preprocessing=(f"center crop {crop}x{crop} of the 178x218 aligned image, "
                       f"Lanczos resize to {size}x{size}"),
    )
