"""SRGAN's content losses: pixel MSE or L1, or the VGG feature loss, and where the VGG19 weights come from.

The feature loss (Ledig et al. 2017) is the MSE between VGG19 feature maps of SR and HR:
`vgg54` takes the features after conv5_4's ReLU (the paper's SRGAN), `vgg22` after conv2_2's.
The weights are torchvision's ImageNet VGG19 (`vgg19-dcbb9e9d.pth`), located as the FID
Inception is (distgan/metrics/inception.py): an explicit path, else $DISTGAN_VGG19, else the
distgan cache, else torch hub's cache; downloaded (sha256-checked) only when asked.
Only the convolutions up to the chosen layer are loaded, with `weights_only=True`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from distgan.metrics.features import user_cache
from distgan.metrics.weights import download_checked, locate_weights

CONTENT_LOSSES = ("mse", "l1", "features")
VGG_LAYERS = {"vgg22": 9, "vgg54": 36}  # torchvision vgg19().features[:n] ends after that conv's ReLU
VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
VGG19_SHA256 = "dcbb9e9d"  # torch hub's file-name prefix of the sha256
ENV_VAR = "DISTGAN_VGG19"
FEATURE_SCALE = 1.0 / 12.75  # the paper's rescaling of VGG feature maps (~0.006 on the squared error)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsError(FileNotFoundError):
    """The VGG19 weights are missing or are not a torchvision VGG19 state dict."""


def find_vgg19_weights(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """`path`, else $DISTGAN_VGG19, else the distgan cache, else torch hub's cache, else (with `download`)
    a checked download into the distgan cache; otherwise an error that says how to get them."""
    looked = [user_cache() / VGG19_FILE, Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE]
    found = locate_weights(path, ENV_VAR, "VGG19 weights", looked, VGGWeightsError)
    if found is not None:
        return found
    if download:
        return download_checked(VGG19_URL, looked[0], "sha256", VGG19_SHA256)
    raise VGGWeightsError(
        f"loss.content=features needs the VGG19 weights; looked in ${ENV_VAR} (not set), {looked[0]}, {looked[1]}. "
        f"Download {VGG19_URL} (sha256 starts {VGG19_SHA256}) to {looked[0]} or set ${ENV_VAR} to its path, "
        "or run `python -m distgan.content_loss --download` on a connected machine"
    )


def vgg_features(weights: Path, layer: str) -> nn.Sequential:
    """torchvision's VGG19 `features[:n]` for `layer`, its weights loaded, frozen, in eval mode."""
    from torchvision.models.vgg import cfgs, make_layers  # the features alone: vgg19() also builds 120M fc weights

    if layer not in VGG_LAYERS:
        raise ValueError(f"unknown VGG layer {layer!r}; valid: {', '.join(VGG_LAYERS)}")
    net = make_layers(cfgs["E"])[: VGG_LAYERS[layer]]
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which
        raise VGGWeightsError(f"{weights}: not a readable torch state dict ({type(exc).__name__}: {exc})") from None
    wanted = net.state_dict().keys()
    found = {k: state[f"features.{k}"] for k in wanted if f"features.{k}" in state}
    if len(found) != len(wanted):
        missing = next(k for k in wanted if k not in found)
        raise VGGWeightsError(f"{weights}: not a torchvision VGG19 state dict (no features.{missing})")
    try:
        net.load_state_dict(found)
    except RuntimeError as exc:
        raise VGGWeightsError(f"{weights}: VGG19 weights of the wrong shape: {str(exc).splitlines()[-1]}") from None
    return net.eval().requires_grad_(False)


class ContentLoss(nn.Module):
    """SR vs HR, both float NCHW in [-1, 1]: pixel MSE, pixel L1, or the VGG feature MSE."""

    def __init__(self, kind: str, features: nn.Sequential | None = None):
        super().__init__()
        if kind not in CONTENT_LOSSES:
            raise ValueError(f"unknown content loss {kind!r}; valid: {', '.join(CONTENT_LOSSES)}")
        if (kind == "features") != (features is not None):
            raise ValueError("the feature loss needs the VGG features, and only it")
        self.kind = kind
        self.features = features
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _vgg(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return self.features(((rgb.float() + 1.0) / 2.0 - self.mean) / self.std) * FEATURE_SCALE

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return F.mse_loss(sr.float(), hr.float())
        if self.kind == "l1":
            return F.l1_loss(sr.float(), hr.float())
        return F.mse_loss(self._vgg(sr), self._vgg(hr))


def main(argv: list[str] | None = None) -> int:
    """`python -m distgan.content_loss --download`: fetch the VGG19 weights (sha256-checked) into the cache."""
    import argparse
    import sys

    from distgan.metrics.weights import WeightsDownloadError

    parser = argparse.ArgumentParser(prog="python -m distgan.content_loss", description=main.__doc__)
    parser.add_argument("--download", action="store_true", help=f"download {VGG19_URL} when not found")
    args = parser.parse_args(argv)
    try:
        print(find_vgg19_weights(download=args.download))
    except (VGGWeightsError, WeightsDownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
