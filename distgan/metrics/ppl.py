"""Perceptual path length (Karras et al. 2019) in W with end-point sampling: stylegan2-ada-pytorch's `ppl_wend`.

Per sample: z0, z1 ~ N(0, I) from a seeded CPU generator (and, for a conditional G, one label for both, drawn
balanced as the other metrics draw them); w0, w1 through G's mapping; the images at w0 and at
lerp(w0, w1, eps), eps = 1e-4 (t = 0: "end" sampling); their LPIPS distance / eps². G's fixed noise is redrawn
for every batch (both images of a pair share it), as NVlabs' sampler redraws `noise_const`. The figure is the
mean of the distances between their 1st ('lower') and 99th ('higher') percentiles.

Where this differs from NVlabs, on purpose:
- no crop: NVlabs crops FFHQ images to the face region before measuring (`crop=True` for FFHQ only); distgan's
  images are not aligned faces, so the whole image is measured;
- size: images are brought to 256x256 before LPIPS: smaller ones bilinearly up-sampled (VGG then sees structures
  at about the scale of its ImageNet training, as on FFHQ at 256 px), larger ones area-averaged like NVlabs';
  a non-square image is squashed to the square;
  NVlabs feeds a smaller image as it is, so a 32-px model's PPL here compares with distgan's figures only;
- the distance: LPIPS v0.1 VGG from torchvision's VGG16 and the `lpips` package's heads (`lpips_vgg.py`); NVlabs
  uses its own TorchScript conversion of LPIPS-VGG (vgg16.pt). Same definition, not promised the same figures.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from distgan.metrics.generated import latents
from distgan.metrics.lpips_vgg import LPIPSDistance
from distgan.models import WSpace, family_of, latent_size

PPL_EPSILON = 1e-4
PPL_SIZE = 256  # LPIPS' input size
PPL_SETTINGS = {"space": "w", "sampling": "end", "epsilon": PPL_EPSILON, "crop": False, "size": PPL_SIZE,
                "percentiles": [1, 99]}


def w_space_of(generator: nn.Module) -> WSpace:
    """A private copy of `generator`'s W (its noise gets redrawn), or a ValueError naming the family."""
    family = family_of(generator)
    space = family.w_space(copy.deepcopy(generator).eval().requires_grad_(False))
    if space is None:
        raise ValueError(f"ppl walks in W, a style-based generator's intermediate latent space: model.arch "
                         f"{generator.spec.arch!r} maps z to the image directly and has none (stylegan2 has one)")
    return space


def lpips_input(images: torch.Tensor, size: int = PPL_SIZE) -> torch.Tensor:
    """G's float images [N, C, H, W] in [-1, 1] as LPIPS takes them: 3 channels, size x size."""
    images = images.float()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h >= size and w >= size:  # area averages (NVlabs' reshape-mean where the sizes divide)
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=h > size or w > size)


@torch.inference_mode()
def path_lengths(space: WSpace, distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int, nz: int,
                 num_classes: int = 0, *, batch_size: int = 32, seed: int = 0, epsilon: float = PPL_EPSILON,
                 size: int = PPL_SIZE, device: str | torch.device = "cpu",
                 progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The n squared path-length samples LPIPS(G(w0), G(lerp(w0, w1, eps))) / eps² (float64, CPU)."""
    device = torch.device(device)
    z0, labels = latents(n, nz, num_classes, seed)  # the other metrics' latents and balanced labels
    z1, _ = latents(n, nz, 0, seed + 1)
    noise = torch.Generator().manual_seed(seed + 2)
    out = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        zb = torch.cat([z0[start:stop], z1[start:stop]]).to(device)
        lb = labels[start:stop].repeat(2).to(device) if labels is not None else None
        w0, w1 = space.mapping(zb, lb).chunk(2)
        space.resample_noise(noise)
        images = lpips_input(space.synthesis(torch.cat([w0, w0.lerp(w1, epsilon)])), size)
        image0, image1 = images.chunk(2)
        out.append(distance(image0, image1).double().cpu() / epsilon ** 2)
        if progress is not None:
            progress(stop - start)
    return torch.cat(out)


def ppl_of(lengths: torch.Tensor) -> float:
    """NVlabs' reduction: the mean of the samples between the 1st ('lower') and 99th ('higher') percentiles."""
    values = lengths.numpy()
    lo = np.percentile(values, 1, method="lower")
    hi = np.percentile(values, 99, method="higher")
    return float(values[(values >= lo) & (values <= hi)].mean())


def perceptual_path_length(generator: nn.Module, distance: LPIPSDistance, n: int, *, batch_size: int = 32,
                           seed: int = 0, device: str | torch.device = "cpu",
                           progress: Callable[[int], None] | None = None) -> float:
    """PPL (W, end-points, eps 1e-4, no crop, 256 px) of a generator whose family has a W (see the module doc)."""
    spec = generator.spec
    classes = spec.num_classes if spec.conditional else 0
    lengths = path_lengths(w_space_of(generator), distance, n, latent_size(generator), classes,
                           batch_size=batch_size, seed=seed, device=device, progress=progress)
    return ppl_of(lengths)
