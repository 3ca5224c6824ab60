"""Data: raw datasets -> WebDataset shards -> per-rank streaming batches.

The loader's names are imported on first use, so that `distgan.data.manifest` (the shard format) can be read
by torch-free programs (distgan-serve --data) without importing torch through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from distgan.data.manifest import DataError, Manifest

_LOADER_NAMES = ("Batch", "ShardLoader", "normalize_images", "to_device")

__all__ = ["Batch", "DataError", "Manifest", "ShardLoader", "normalize_images", "to_device"]


def __getattr__(name: str) -> Any:
    if name in _LOADER_NAMES:
        return getattr(importlib.import_module("distgan.data.loader"), name)
    raise AttributeError(f"module 'distgan.data' has no attribute {name!r}")
