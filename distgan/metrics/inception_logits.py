"""The Inception Score network: torch-fidelity's `inception-v3-compat`, the 1008 TF logits.

The FID TorchScript (inception.py) stops at the 2048-d pool, so the Inception
Score uses torch-fidelity's port of the same TF graph *with* its classifier:
weights `weights-inception-2015-12-05-6726825d.pth` (the suffix is the start of
its sha256, torch-hub style), resize `interpolate_bilinear_2d_like_tensorflow1x`
to 299, and the `logits_unbiased` output (no bias), exactly what
`torch_fidelity.calculate_metrics(isc=True)` scores. The weights come from: an
explicit path, $DISTGAN_INCEPTION_IS, the distgan cache, torch hub's cache (where
torch-fidelity puts them), or, asked for, a checked download.

torch-fidelity reads the file with `torch.load(weights_only=False)`; here it is
read with TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 in force, so it cannot unpickle
anything but tensors.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from distgan.data.shards import file_digest
from distgan.metrics.features import check_images, user_cache
from distgan.metrics.inception import InceptionWeightsError
from distgan.metrics.weights import download_checked, locate_weights

IS_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
IS_WEIGHTS_SHA256_PREFIX = "6726825d"
IS_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{IS_WEIGHTS_FILE}"
IS_ENV_VAR = "DISTGAN_INCEPTION_IS"


def torch_hub_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IS_WEIGHTS_FILE


def find_is_weights(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The IS weights file; an explicit path (argument or $DISTGAN_INCEPTION_IS) must exist."""
    looked = [user_cache() / IS_WEIGHTS_FILE, torch_hub_weights()]
    found = locate_weights(path, IS_ENV_VAR, "Inception Score weights", looked, InceptionWeightsError)
    if found is not None:
        return found
    if download:
        return download_checked(IS_WEIGHTS_URL, looked[0], "sha256", IS_WEIGHTS_SHA256_PREFIX)
    raise InceptionWeightsError(
        "no Inception Score weights (torch-fidelity's inception-v3-compat, with the 1008-way classifier the "
        f"FID TorchScript lacks); looked in: ${IS_ENV_VAR} (not set); {looked[0]}; {looked[1]}. Get them with "
        f"--download on a connected machine, or download {IS_WEIGHTS_URL} (sha256 {IS_WEIGHTS_SHA256_PREFIX}...) "
        f"to one of those places or set ${IS_ENV_VAR}; or score with --features domain (the domain classifier's IS)"
    )


@contextmanager
def _weights_only_loads() -> Iterator[None]:
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


class InceptionLogits:
    """1008 unbiased TF-Inception logits of uint8 NHWC images (gray repeated to RGB), for the Inception Score."""

    dim = 1008

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 32, download: bool = False, check_digest: bool = True):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.path = find_is_weights(path, download)
        digest = file_digest(self.path)
        if check_digest and not digest.startswith(IS_WEIGHTS_SHA256_PREFIX):
            raise InceptionWeightsError(
                f"{self.path}: sha256 {digest}, expected {IS_WEIGHTS_SHA256_PREFIX}... ({IS_WEIGHTS_FILE}); "
                "other weights give Inception Scores that compare with no one else's"
            )
        try:
            with _weights_only_loads():
                net = FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"],
                                                  feature_extractor_weights_path=str(self.path))
        except Exception as exc:  # an unsafe pickle, or a state dict of another network
            raise InceptionWeightsError(f"{self.path}: not loadable as torch-fidelity's inception-v3-compat "
                                        f"weights ({type(exc).__name__}: {str(exc)[:300]})") from exc
        self.name = f"inception-v3-compat-logits:{digest[:12]}"
        self.device, self.batch_size = torch.device(device), batch_size
        self.net = net.to(self.device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        out = []
        for chunk in images.split(self.batch_size):
            x = chunk.to(self.device).permute(0, 3, 1, 2)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            out.append(self.net(x.contiguous())[0].float().cpu())
        return torch.cat(out)
