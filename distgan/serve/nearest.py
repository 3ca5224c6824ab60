"""The memorisation check: a sample's nearest training images, torch-free (`distgan-serve MODEL --data DIR`).

Feature space: raw pixels, box-downscaled by the smallest whole factor that leaves at most
MAX_FEATURES values per image (28x28 grayscale stays 784 values; 64x64 RGB becomes 16x16x3),
scaled to 0..1. The distance is the root-mean-square difference of those values: 0 is the
same image (at that resolution), 0.1 a tenth of the pixel range on average. Why pixels and
not the domain classifier's or Inception's features: the server is torch-free and those
networks are torch models; and memorisation is a copy of a training image, which pixels
show most directly (a classifier's features call two different shirts of one class close).
It misses copies that are shifted or flipped.

The index (downscaled features, the images, their labels, and the features' top PCA_DIMS
principal components) is built once, with a progress bar, and cached in DIR/nearest-index/
(one file set per dataset.json content), then memory-mapped. A look-up is exact, and cheap:
a lower bound of every training image's distance from the components (one small
matrix-vector product: 60,000 x 128 values, where the full features are 60,000 x 784) and
the norm of what they leave out (||x - q|| >= ||P(x - q)|| and >= | ||x_res|| - ||q_res|| |),
the exact distance of the RERANK images with the smallest bounds, then of every other image
whose bound is under the k-th exact distance found (none, for images like the training set's).
So the k nearest are the true k nearest, and a training image finds itself at distance 0.
The products use numpy's einsum: on this 2-core machine, busy, BLAS's threaded gemv took
5-20 ms for what einsum's single loop does in 2.
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
INDEX_VERSION = 2
PCA_DIMS = 128
PCA_SAMPLE = 20_000  # images the components are fitted on
RERANK = 256  # candidates re-ranked exactly


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
            if not manifest.has_chunk_sums:  # a format-1 manifest: the whole file's sha256 instead
                with open(directory / shard.name, "rb") as f:
                    if hashlib.file_digest(f, "sha256").hexdigest() != shard.sha256:
                        raise DataError(f"{directory / shard.name}: sha256 does not match {MANIFEST_NAME}")
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


def principal_components(features: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], basis [D, dims]): the top principal directions of (a seeded sample of) the features."""
    sample = features if len(features) <= PCA_SAMPLE else \
        features[np.sort(np.random.default_rng(0).choice(len(features), PCA_SAMPLE, replace=False))]
    mean = sample.mean(axis=0, dtype=np.float64)
    centred = np.asarray(sample, np.float64) - mean
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return mean.astype(np.float32), np.ascontiguousarray(vectors[:, ::-1][:, :dims], np.float32)


def project(features: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return np.concatenate([(features[i:i + 8192] - mean) @ basis for i in range(0, len(features), 8192)]) \
        if len(features) else np.zeros((0, basis.shape[1]), np.float32)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)


class NearestIndex:
    """The training images of one prepared dataset, searchable by pixel distance."""

    def __init__(self, name: str, split: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 features: np.ndarray, factor: int, cache: Path | None,
                 components: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        """`components`: (mean, basis, the features projected, the norms of what the projection leaves out), computed
        here when not given (from the cache)."""
        self.name, self.split, self.classes, self.factor, self.cache = name, split, classes, factor, cache
        self._images, self.labels, self.features = images, labels, features
        if components is None:
            mean, basis = principal_components(features, min(PCA_DIMS, features.shape[1]))
            reduced = project(features, mean, basis)
            centred = np.concatenate([np.einsum("ij,ij->i", features[i:i + 8192] - mean, features[i:i + 8192] - mean)
                                      for i in range(0, len(features), 8192)])
            residual = np.sqrt(np.maximum(centred - np.einsum("ij,ij->i", reduced, reduced), 0)).astype(np.float32)
            components = (mean, basis, reduced, residual)
        self.mean, self.basis, self.reduced, self.residual = components
        self.squared = np.einsum("ij,ij->i", self.reduced, self.reduced)

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
        names = ("images.npy", "labels.npy", "features.npy", "mean.npy", "basis.npy", "reduced.npy", "residual.npy")
        if all((cache / n).is_file() for n in names):
            images, labels, features, *components = (np.load(cache / n, mmap_mode="r", allow_pickle=False)
                                                     for n in names)
            return cls(manifest.name, split, images, np.asarray(labels), manifest.classes, features, factor, cache,
                       tuple(np.array(c) for c in components))
        images, labels = read_split(directory, manifest, split)
        features = np.concatenate([pixel_features(images[i:i + 4096], factor) for i in range(0, len(images), 4096)])
        index = cls(manifest.name, split, images, labels, manifest.classes, features, factor, cache)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            arrays = (images, labels, features, index.mean, index.basis, index.reduced, index.residual)
            for n, array in zip(names, arrays):
                _save_atomic(cache / n, array)
        except OSError as exc:  # a read-only dataset folder: the index lives in memory only
            print(f"distgan-serve: note: cannot cache the index in {cache} ({exc.strerror}); built in memory")
            index.cache = None
        return index

    def query(self, image: np.ndarray, k: int) -> Found:
        """The k training images nearest `image` (uint8 [H, W, C] of the dataset's shape), nearest first."""
        if tuple(image.shape) != self.image_shape:
            raise ValueError(f"image of shape {list(image.shape)}; the index holds {list(self.image_shape)}")
        q = pixel_features(image[None], self.factor)[0]
        centred = q - self.mean
        r = centred @ self.basis
        q_residual = np.sqrt(max(float(centred @ centred - r @ r), 0.0))
        in_components = self.squared - 2 * np.einsum("ij,j->i", self.reduced, r) + r @ r
        bound = (np.maximum(in_components, 0) + (self.residual - q_residual) ** 2) / len(q)  # <= exact, per image
        count = min(len(bound), max(RERANK, k))
        best = np.sort(np.argpartition(bound, count - 1)[:count])  # sorted: memory-mapped rows in order
        exact = self._exact(best, q)
        kth = np.partition(exact, k - 1)[k - 1]
        rest = np.setdiff1d(np.flatnonzero(bound <= kth * (1 + 1e-5) + 1e-9), best, assume_unique=True)
        if len(rest):  # bounds under the k-th distance found: they could be nearer, measure them too
            best, exact = np.concatenate([best, rest]), np.concatenate([exact, self._exact(rest, q)])
        order = np.lexsort((best, exact))[:k]  # nearest first; equal distances by index
        return Found(best[order].astype(np.int64), np.sqrt(exact[order]).astype(np.float32))

    def _exact(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Mean squared differences of the features of `rows` (ascending indices) from q, in chunks."""
        return np.concatenate([np.mean((self.features[rows[i:i + 4096]] - q) ** 2, axis=1)
                               for i in range(0, len(rows), 4096)]) if len(rows) else np.zeros(0, np.float32)

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

