"""Reference statistics of a dataset split, computed once per feature extractor and cached as .npz.

The cache key names the extractor (its weight digest), the dataset (its
manifest name and the sha256 of every shard of the split, so re-prepared data
is a new key), the split and the image count. Files are plain arrays, read with
allow_pickle=False, and checked against the key they were written for.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count), identity=np.str_(identity))
    os.replace(tmp, path)


def load_stats(path: Path, identity: str | None = None) -> FeatureStats:
    """Read cached statistics; with `identity`, refuse a file written for something else."""
    with np.load(path, allow_pickle=False) as f:
        if identity is not None and str(f["identity"]) != identity:
            raise ValueError(f"{path}: written for {str(f['identity'])[:120]!r}, not {identity[:120]!r}")
        return FeatureStats(f["mu"], f["sigma"], int(f["count"]))


def reference_stats(
    extractor: FeatureExtractor, data: str | Path, split: str = "train", *, max_images: int | None = None,
    batch_size: int = 256, cache_dir: str | Path | None = None,
) -> FeatureStats:
    """mu, sigma and count of `extractor`'s features over a split (its first `max_images`), cached."""
    manifest = read_manifest(str(data))
    identity = stats_identity(extractor.name, manifest, split, max_images)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{manifest.name}-{split}-{extractor.name}")
    path = Path(cache_dir) if cache_dir is not None else user_cache() / "reference"
    path = path / f"{slug}-{digest}.npz"
    if path.is_file():
        return load_stats(path, identity)
    loader = ShardLoader(str(data), split, batch_size, num_workers=0, shuffle_buffer=0, drop_last=False)
    features = extract_features(extractor, (b.images for b in loader.epoch(0)), max_images)
    stats = FeatureStats.of(features)
    save_stats(path, stats, identity)
    return stats
