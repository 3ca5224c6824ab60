"""Raw datasets -> arrays: the `RawDataset` type, MNIST-style IDX files, seeded subsets (image folders and
CelebA: `distgan/data/folders.py`).

Each reader returns a `RawDataset`: per split, the labels up front and a
function that loads the images for given indices, so image files are decoded
shard by shard (in parallel) rather than all held in memory as files.
"""

from __future__ import annotations

import dataclasses
import gzip
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distgan.data.manifest import DataError

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
    report: Any = None  # a folder's `PrepareReport`, written beside dataset.json
    work: Any = None  # what the loaders need alive (a scan's temporary folder)


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

