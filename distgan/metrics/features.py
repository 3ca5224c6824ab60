"""What every feature extractor agrees on: the input convention, the cache, the extraction loop.

Input convention: extractors take **uint8 images [N, H, W, C]** (C = 1 or 3) on
any device, exactly what `ShardLoader` yields. Generated images (float NCHW in
[-1, 1]) go through `distgan.runtime.to_uint8_nhwc` first, so real and fake images are quantised the
same way, as the reference FID protocols do when they read PNGs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Protocol

import torch
from tqdm import tqdm


class FeatureExtractor(Protocol):
    """uint8 NHWC images -> float32 [N, dim] features on the CPU."""

    #: Identity of the weights and layer (includes a digest); keys cached reference statistics.
    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


CACHE_ENV_VAR = "DISTGAN_CACHE"


def user_cache() -> Path:
    """Where distgan keeps weights, domain classifiers and reference statistics.

    $DISTGAN_CACHE when set (a shared cache on a cluster, a temporary one in
    tests), else ~/.cache/distgan.
    """
    return Path(os.environ.get(CACHE_ENV_VAR) or "~/.cache/distgan").expanduser()


def check_images(images: torch.Tensor) -> None:
    """Refuse anything but uint8 NHWC with 1 or 3 channels (a float NCHW batch is the usual mistake)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images [N, H, W, C] with C in (1, 3), got {images.dtype} "
            f"{tuple(images.shape)}; convert generator output with distgan.runtime.to_uint8_nhwc"
        )


def extract_features(
    extractor: FeatureExtractor, batches: Iterable[torch.Tensor], max_images: int | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """Features of a stream of uint8 NHWC batches, stopping after `max_images`.

    `progress` names a tqdm bar (stderr) for long extractions; None keeps quiet.
    """
    parts, seen = [], 0
    with tqdm(total=max_images, desc=progress, unit="img", disable=progress is None, leave=False,
              dynamic_ncols=True) as bar:
        for images in batches:
            if max_images is not None:
                images = images[: max_images - seen]
            if len(images):
                parts.append(extractor(images))
                seen += len(images)
                bar.update(len(images))
            if max_images is not None and seen >= max_images:
                break
    if not parts:
        raise ValueError("no images to extract features from")
    return torch.cat(parts)
