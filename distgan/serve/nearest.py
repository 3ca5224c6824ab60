"""The memorisation check: a sample's nearest training images, torch-free (`distgan-serve MODEL --data DIR`).

Feature space: raw pixels, box-downscaled by the smallest whole factor that leaves at most
MAX_FEATURES values per image (28x28 grayscale stays 784 values; 64x64 RGB becomes 16x16x3),
scaled to 0..1. The distance is the root-mean-square difference of those values: 0 is the
same image (at that resolution), 0.1 a tenth of the pixel range on average. Why pixels and
not the domain classifier's or Inception's features: the server is torch-free and those
networks are torch models; and memorisation is a copy of a training image, which pixels
show most directly (a classifier's features call two different shirts of one class close).
It misses copies that are shifted or flipped.

The index (downscaled features, the images, their labels) is built once, with a progress bar,
and cached in DIR/nearest-index/ (one file set per dataset.json content), then memory-mapped.
A look-up is one matrix-vector product over every training image's features, then an exact
re-ranking of the best candidates (so a training image finds itself at distance exactly 0).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distgan.data.manifest import (
    IMAGES_EXT, LABELS_EXT, MANIFEST_NAME, DataError, Manifest, chunk_digest, decode_array,
)

MAX_FEATURES = 1024
INDEX_DIR = "nearest-index"
INDEX_VERSION = 1
RERANK = 64  # candidates re-ranked exactly


def downscale_factor(height: int, width: int, channels: int) -> int:
    """The smallest whole factor f with (H // f) * (W // f) * C <= MAX_FEATURES."""
    factor = 1
    while (height // factor) * (width // factor) * channels > MAX_FEATURES:
        factor += 1
    return factor


def pixel_features(images: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, D]: f x f box means (crop to a multiple of f), scaled to 0..1."""
    n, h, w, c = images.shape
    hh, ww = h // factor, w // factor
    blocks = images[:, :hh * factor, :ww * factor].reshape(n, hh, factor, ww, factor, c)
    return (blocks.mean(axis=(2, 4), dtype=np.float32) / np.float32(255)).reshape(n, -1)


@dataclass(frozen=True)
class Found:
    indices: np.ndarray  # int64 [k], nearest first
    distances: np.ndarray  # float32 [k], RMS difference of the downscaled 0..1 pixels


def read_split(directory: Path, manifest: Manifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image and label of a split from its local shards, each chunk checked against the manifest."""
    info = manifest.split(split)
    images = np.empty((info.num_samples, *manifest.image_shape), np.uint8)
    labels = np.empty(info.num_samples, np.int64)
    at = 0
    with tqdm(total=info.num_samples, desc=f"nearest-image index ({directory.name}/{split})", unit="img") as bar:
        for shard in info.shards:
            for index, chunk_images, chunk_labels in _shard_chunks(directory / shard.name, shard.chunk_xxh3_128):
                if at + len(chunk_images) > info.num_samples or chunk_images.shape[1:] != manifest.image_shape:
                    raise DataError(f"{directory / shard.name}: chunk {index} does not fit {MANIFEST_NAME} "
                                    f"(shape {list(chunk_images.shape)})")
                images[at:at + len(chunk_images)] = chunk_images
                labels[at:at + len(chunk_images)] = chunk_labels
                at += len(chunk_images)
                bar.update(len(chunk_images))
    if at != info.num_samples:
        raise DataError(f"{directory}: the shards of split {split!r} hold {at} images; {MANIFEST_NAME} says "
                        f"{info.num_samples}")
    return images, labels


def _shard_chunks(path: Path, sums: list[str]):
    """(index, images, labels) per chunk of one local shard; only the two .npy members, never unpickled."""
    try:
        with tarfile.open(path, "r:") as tar:
            members: dict[str, bytes] = {}
            index = 0
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext not in (IMAGES_EXT, LABELS_EXT) or not member.isfile():
                    raise DataError(f"{path}: unexpected member {member.name!r}")
                members[ext] = tar.extractfile(member).read()
                if len(members) < 2:
                    continue
                if sums and (index >= len(sums) or chunk_digest(members[IMAGES_EXT], members[LABELS_EXT])
                             != sums[index]):
                    raise DataError(f"{path}: chunk {index} ({key}) does not match its checksum in {MANIFEST_NAME}")
                where = f"{path}: chunk {index}"
                yield (index, decode_array(members[IMAGES_EXT], np.uint8, where),
                       decode_array(members[LABELS_EXT], np.int64, where))
                members, index = {}, index + 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the shard ({exc})") from exc


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)


class NearestIndex:
    """The training images of one prepared dataset, searchable by pixel distance."""

    def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 features: np.ndarray, factor: int, cache: Path | None):
        self.name, self.split, self.classes, self.factor, self.cache = name, split, classes, factor, cache
        self._images, self.labels, self.features = images, labels, features
        self.squared = np.einsum("ij,ij->i", features, features)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self._images.shape[1:])

    @classmethod
    def open(cls, directory: Path, split: str = "train") -> NearestIndex:
        """The index of `directory` (from distgan-data prepare): built and cached on first use, then loaded."""
        directory = Path(directory)
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise DataError(f"{manifest_path}: no such file; --data takes a folder from `distgan-data prepare`")
        text = manifest_path.read_text()
        manifest = Manifest.from_json(text, str(manifest_path))
        factor = downscale_factor(*manifest.image_shape)
        key = hashlib.sha256(f"{INDEX_VERSION}:{split}:{factor}:{text}".encode()).hexdigest()[:16]
        cache = directory / INDEX_DIR / key
        names = ("images.npy", "labels.npy", "features.npy")
        if all((cache / n).is_file() for n in names):
            images, labels, features = (np.load(cache / n, mmap_mode="r", allow_pickle=False) for n in names)
            return cls(manifest.name, split, images, np.asarray(labels), manifest.classes, np.asarray(features),
                       factor, cache)
        images, labels = read_split(directory, manifest, split)
        features = np.concatenate([pixel_features(images[i:i + 4096], factor) for i in range(0, len(images), 4096)])
        try:
            cache.mkdir(parents=True, exist_ok=True)
            for n, array in zip(names, (images, labels, features)):
                _save_atomic(cache / n, array)
        except OSError as exc:  # a read-only dataset folder: the index lives in memory only
            print(f"distgan-serve: note: cannot cache the index in {cache} ({exc.strerror}); built in memory")
            cache = None
        return cls(manifest.name, split, images, labels, manifest.classes, features, factor, cache)

    def query(self, image: np.ndarray, k: int) -> Found:
        """The k training images nearest `image` (uint8 [H, W, C] of the dataset's shape), nearest first."""
        if tuple(image.shape) != self.image_shape:
            raise ValueError(f"image of shape {list(image.shape)}; the index holds {list(self.image_shape)}")
        q = pixel_features(image[None], self.factor)[0]
        squared = self.squared - 2 * (self.features @ q) + q @ q  # ||x - q||^2 for every x, from one product
        candidates = min(len(squared), max(RERANK, k))
        best = np.argpartition(squared, candidates - 1)[:candidates]
        exact = np.mean((self.features[best] - q) ** 2, axis=1)  # the re-ranking, exact
        order = np.argsort(exact, kind="stable")[:k]
        return Found(best[order].astype(np.int64), np.sqrt(exact[order]).astype(np.float32))

    def images(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self._images[indices])

    def describe(self) -> dict[str, Any]:
        h, w, c = self.image_shape
        return {"dataset": self.name, "split": self.split, "count": len(self.labels), "classes": self.classes,
                "features": f"pixels, {h // self.factor}x{w // self.factor}x{c} box means in 0..1",
                "distance": "root-mean-square difference of those values (0 = the same image)"}


def check_fits(index: NearestIndex, shape: tuple[int, int, int], where: str) -> None:
    if index.image_shape != shape:
        raise DataError(f"{where}: --data holds {list(index.image_shape)} (H, W, C) images but the model draws "
                        f"{list(shape)}")

