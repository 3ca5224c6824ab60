"""Raw datasets -> arrays: MNIST-style IDX files, aligned CelebA, and image folders.

Each reader returns a `RawDataset`: per split, the labels up front and a
function that loads the images for given indices, so image files are decoded
shard by shard (in parallel) rather than all held in memory as files.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from distgan.data.manifest import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(d) for d in range(10)]

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Official mirrors and the md5 sums torchvision verifies them against.
IDX_DOWNLOADS = {
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
    "mnist": {
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
}

# Seeds --limit's subset with (seed, this), apart from the shard shuffle's stream, which shares the seed.
LIMIT_STREAM = 17

# Where distributions put the raw files (Debian: dataset-fashion-mnist).
STANDARD_PLACES = {
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist", "~/.cache/distgan/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist", "~/.cache/distgan/mnist"],
}


@dataclass
class RawSplit:
    labels: np.ndarray  # int64 [N]
    load: Callable[[np.ndarray], np.ndarray]  # indices -> uint8 [n, H, W, C]

    @property
    def num_samples(self) -> int:
        return len(self.labels)


@dataclass
class RawDataset:
    name: str
    height: int
    width: int
    channels: int
    classes: list[str]
    splits: dict[str, RawSplit]
    source: dict[str, Any] = field(default_factory=dict)
    preprocessing: str = ""


def limit_split(raw: RawDataset, limit: int, seed: int, split: str = "train") -> RawDataset:
    """`raw` with only `limit` images of `split`, a seeded random subset; other splits stay whole.

    The subset is the first `limit` of one seeded permutation, so a seed picks
    the same images every time, and a smaller limit picks a subset of a larger
    one's (nested training sets for a quality-vs-size curve). The source
    records the limit, the seed and the split's full size.
    """
    if split not in raw.splits:
        raise DataError(f"{raw.name}: no {split!r} split to limit; it has {sorted(raw.splits)}")
    full = raw.splits[split]
    if not 1 <= limit <= full.num_samples:
        raise DataError(f"--limit {limit}: the {split} split of {raw.name} has {full.num_samples} images; "
                        f"choose 1..{full.num_samples}")
    chosen = np.sort(np.random.default_rng([seed, LIMIT_STREAM]).permutation(full.num_samples)[:limit])
    splits = dict(raw.splits)
    splits[split] = RawSplit(labels=full.labels[chosen], load=partial(_load_subset, full.load, chosen))
    source = {**raw.source, "limit": {"split": split, "images": limit, "of": full.num_samples, "seed": seed}}
    return dataclasses.replace(raw, splits=splits, source=source)


def _load_subset(load: Callable[[np.ndarray], np.ndarray], chosen: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return load(chosen[indices])


# --- IDX (MNIST, Fashion-MNIST) -------------------------------------------------

def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes, validating its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    if ndim != expected_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: header says shape {dims} ({expected} bytes) "
            f"but the file holds {len(data) - header} bytes (truncated or wrong file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_dir(name: str, src: Path | None) -> Path:
    """--src first, then the standard local places; None found -> clear error."""
    candidates = [src] if src is not None else [Path(p).expanduser() for p in STANDARD_PLACES[name]]
    for directory in candidates:
        if directory is not None and _idx_path(directory, IDX_FILES["train"][0]) is not None:
            return directory
    if src is not None:
        raise DataError(
            f"{src}: no {IDX_FILES['train'][0]}[.gz] here; expected the four IDX files "
            f"{[f for pair in IDX_FILES.values() for f in pair]}"
        )
    places = ", ".join(STANDARD_PLACES[name])
    raise DataError(
        f"{name}: raw IDX files not found in {places}. Pass --src DIR, "
        f"install Debian's dataset-{name} package where it exists, or add --download"
    )


def _idx_path(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def download_idx(name: str, root: Path) -> Path:
    """Fetch the IDX files from the official mirrors, verifying md5 (torchvision's checker)."""
    from torchvision.datasets.utils import check_integrity, download_url

    info = IDX_DOWNLOADS[name]
    root.mkdir(parents=True, exist_ok=True)
    for filename, md5 in info["md5"].items():
        if check_integrity(str(root / filename), md5):
            continue
        errors = []
        for mirror in info["mirrors"]:
            try:
                download_url(mirror + filename, str(root), filename, md5)
                break
            except Exception as exc:  # network errors vary by mirror; try the next
                errors.append(f"{mirror}: {exc}")
        else:
            raise DataError(f"could not download {filename}: " + "; ".join(errors))
    return root


def read_idx_dataset(name: str, src: Path | None, download: bool = False) -> RawDataset:
    if download and src is None:
        try:
            directory = find_idx_dir(name, None)
        except DataError:
            directory = download_idx(name, Path(STANDARD_PLACES[name][-1]).expanduser())
    else:
        directory = find_idx_dir(name, src)
    splits = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images_path = _idx_path(directory, images_stem)
        labels_path = _idx_path(directory, labels_stem)
        if images_path is None or labels_path is None:
            missing = images_stem if images_path is None else labels_stem
            raise DataError(f"{directory}: missing {missing}[.gz]")
        images = read_idx(images_path, 3)
        labels = read_idx(labels_path, 1).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path} "
                f"holds {len(labels)} labels"
            )
        if images.shape[1:] != (28, 28):
            raise DataError(f"{images_path}: images are {images.shape[1:]}, expected 28x28")
        splits[split] = RawSplit(labels=labels, load=partial(_take, images[..., None]))
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    return RawDataset(
        name=name, height=28, width=28, channels=1, classes=list(classes), splits=splits,
        source={"kind": "idx", "path": str(directory)},
        preprocessing="none: the original 28x28 grayscale images",
    )


def _take(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return images[indices]


# --- image files (CelebA, folders) ---------------------------------------------

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
