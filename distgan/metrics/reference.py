"""Reference statistics and features of a dataset split, computed once per feature extractor and cached.

The cache key names the extractor (its weight digest), the dataset (its
manifest name and the sha256 of every shard of the split, so re-prepared data
is a new key), the split and the image count. FID needs only the statistics
(mu, sigma); KID and precision/recall need the features themselves, which are
cached beside them (10,000 Inception features are 80 MB). Files are plain
arrays, read with allow_pickle=False, and checked against the key they were
written for.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from distgan.data import Manifest, ShardLoader
from distgan.data.loader import read_manifest
from distgan.metrics.features import FeatureExtractor, extract_features, user_cache
from distgan.metrics.scores import FeatureStats


def stats_identity(extractor_name: str, manifest: Manifest, split: str, max_images: int | None) -> str:
    """What one reference statistic was computed from; stored in the file and hashed into its name."""
    shards = ",".join(s.sha256 for s in manifest.split(split).shards)
    return f"{extractor_name}|{manifest.name}|{split}|{max_images or 'all'}|{shards}"


def save_stats(path: Path, stats: FeatureStats, identity: str) -> None:
    """Atomic write, so a reader never sees a half-written file."""
    _save(path, identity, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count))


def load_stats(path: Path, identity: str | None = None) -> FeatureStats:
    """Read cached statistics; with `identity`, refuse a file written for something else."""
    with np.load(path, allow_pickle=False) as f:
        _check_identity(path, f, identity)
        return FeatureStats(f["mu"], f["sigma"], int(f["count"]))


def _save(path: Path, identity: str, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, identity=np.str_(identity), **arrays)
    os.replace(tmp, path)


def _check_identity(path: Path, f, identity: str | None) -> None:
    if identity is not None and str(f["identity"]) != identity:
        raise ValueError(f"{path}: written for {str(f['identity'])[:120]!r}, not {identity[:120]!r}")


def _cache_path(kind: str, extractor: FeatureExtractor, manifest: Manifest, split: str, identity: str,
                cache_dir: str | Path | None) -> Path:
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{manifest.name}-{split}-{extractor.name}")
    root = Path(cache_dir) if cache_dir is not None else user_cache() / "reference"
    return root / f"{slug}-{digest}{kind}.npz"


def _split_features(extractor: FeatureExtractor, data: str | Path, split: str, max_images: int | None,
                    batch_size: int, progress: bool) -> torch.Tensor:
    loader = ShardLoader(str(data), split, batch_size, num_workers=0, shuffle_buffer=0, drop_last=False)
    total = min(max_images or loader.manifest.split(split).num_samples, loader.manifest.split(split).num_samples)
    return extract_features(extractor, (b.images for b in loader.epoch(0)), total,
                            progress=f"{split} features ({extractor.name.split(':')[0]})" if progress else None)


def reference_features(
    extractor: FeatureExtractor, data: str | Path, split: str = "train", *, max_images: int | None = None,
    batch_size: int = 256, cache_dir: str | Path | None = None, progress: bool = True,
) -> torch.Tensor:
    """`extractor`'s features [N, dim] of a split (its first `max_images`, unshuffled), cached."""
    manifest = read_manifest(str(data))
    identity = stats_identity(extractor.name, manifest, split, max_images)
    path = _cache_path("-features", extractor, manifest, split, identity, cache_dir)
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            _check_identity(path, f, identity)
            return torch.from_numpy(f["features"])
    features = _split_features(extractor, data, split, max_images, batch_size, progress)
    _save(path, identity, features=features.numpy())
    return features


def reference_stats(
    extractor: FeatureExtractor, data: str | Path, split: str = "train", *, max_images: int | None = None,
    batch_size: int = 256, cache_dir: str | Path | None = None, progress: bool = True,
) -> FeatureStats:
    """mu, sigma and count of `extractor`'s features over a split (its first `max_images`), cached.

    Made from the cached features when `reference_features` already holds them,
    so FID and KID together read the split once.
    """
    manifest = read_manifest(str(data))
    identity = stats_identity(extractor.name, manifest, split, max_images)
    path = _cache_path("", extractor, manifest, split, identity, cache_dir)
    if path.is_file():
        return load_stats(path, identity)
    if _cache_path("-features", extractor, manifest, split, identity, cache_dir).is_file():
        features = reference_features(extractor, data, split, max_images=max_images, cache_dir=cache_dir)
    else:
        features = _split_features(extractor, data, split, max_images, batch_size, progress)
    stats = FeatureStats.of(features)
    save_stats(path, stats, identity)
    return stats
