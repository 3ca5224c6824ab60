"""Data: raw datasets -> WebDataset shards -> per-rank streaming batches."""

from distgan.data.loader import Batch, ShardLoader, normalize_images, to_device
from distgan.data.manifest import DataError, Manifest

__all__ = ["Batch", "DataError", "Manifest", "ShardLoader", "normalize_images", "to_device"]
