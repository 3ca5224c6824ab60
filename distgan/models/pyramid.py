"""The Laplacian pyramid of LAPGAN (Denton et al. 2015): the down / up operators, the levels, the bands.

Level 0 is the data's resolution, each next level half the size, the last (coarsest) 8 px or less
(28 -> 14 -> 7, 64 -> 32 -> 16 -> 8). `down` is a 2x2 area average and `up` a bilinear 2x up-sampling
(edges clamped): both are single ONNX ops (AveragePool, Resize) with no border darkening, and the
pyramid is exact whatever they are, since band k is defined as I_k - up(I_{k+1}).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COARSEST_MAX = 8  # px: the pyramid halves while the image is larger than this


def down(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H/2, W/2]: the mean of each 2x2 block (H, W even)."""
    return F.avg_pool2d(images, 2)


def up(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, 2H, 2W]: bilinear, pixel centres aligned (edges clamped)."""
    return F.interpolate(images, scale_factor=2.0, mode="bilinear", align_corners=False)


def level_sizes(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """(height, width) of every level, finest first; ValueError when the image does not halve to <= 8 px."""
    sizes = [(height, width)]
    while max(sizes[-1]) > COARSEST_MAX:
        h, w = sizes[-1]
        if h % 2 or w % 2:
            raise ValueError(f"model.arch lapgan: a {height}x{width} image halves to {h}x{w}, which is odd and "
                             f"larger than {COARSEST_MAX} px; LAPGAN needs sizes that halve to {COARSEST_MAX} px "
                             f"or less (e.g. 28, 32, 64, 128)")
        sizes.append((h // 2, w // 2))
    if len(sizes) < 2:
        raise ValueError(f"model.arch lapgan: a {height}x{width} image is already {COARSEST_MAX} px or less; "
                         f"a pyramid needs at least two levels")
    return tuple(sizes)


def gaussian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """I_0 = images, I_{k+1} = down(I_k): `levels` images, finest first."""
    out = [images]
    for _ in range(levels - 1):
        out.append(down(out[-1]))
    return out


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Bands h_k = I_k - up(I_{k+1}) for k < levels - 1, then the coarsest image I_{levels-1}; finest first."""
    gauss = gaussian_pyramid(images, levels)
    return [fine - up(coarse) for fine, coarse in zip(gauss, gauss[1:])] + [gauss[-1]]


def reconstruct(bands: list[torch.Tensor]) -> torch.Tensor:
    """The inverse of `laplacian_pyramid`: I_k = up(I_{k+1}) + h_k, from the coarsest image up."""
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = up(image) + band
    return image
