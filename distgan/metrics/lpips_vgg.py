"""The LPIPS distance (Zhang et al. 2018, VGG16 trunk, v0.1): perceptual path length's yardstick.

Two parts, from two places:
- the trunk: torchvision's VGG16 ImageNet weights `vgg16-397923af.pth` (sha256 below), found like the
  Inception weights: `--lpips-vgg PATH`, $DISTGAN_VGG16, the distgan cache, torch hub's cache (where
  torchvision keeps it), or with `--download` a sha256-checked download into the distgan cache;
- the five linear heads (1x1 convolutions calibrated on human judgements): the file `weights/v0.1/vgg.pth`
  shipped inside the PyPI package `lpips`, which installs offline like any package.

The `lpips` package's own `LPIPS(net="vgg")` is not constructed: it builds its trunk with torchvision's
`vgg16(pretrained=...)`, the keyword torchvision deprecated in 0.13 (a warning today, gone in some release)
and, unless told its trunk is random, downloads the VGG16 weights itself, unasked and unchecked. Here the
trunk is `torchvision.models.vgg16(weights=None)` with the located state dict loaded into it, and the
package gives what it is needed for: its `ScalingLayer`, `NetLinLayer`, `normalize_tensor` and the heads'
weights. A test checks the distance equals `lpips.LPIPS(net="vgg")`'s on the same trunk weights.

A located trunk file other than torchvision's (by digest) is used, with a warning, and its digest is in
the distance's name: PPL figures compare only when both parts are the same files.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from distgan.data.shards import file_digest
from distgan.metrics.features import user_cache
from distgan.metrics.weights import download_checked, locate_weights

log = logging.getLogger("distgan")

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
VGG16_SHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
VGG16_ENV_VAR = "DISTGAN_VGG16"
HEADS_FILE = Path("weights") / "v0.1" / "vgg.pth"  # inside the lpips package
HEADS_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"  # lpips 0.1.4's
# torchvision's vgg16().features cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: LPIPS' five layers.
CUTS = (4, 9, 16, 23, 30)
CHANNELS = (64, 128, 256, 512, 512)


class LPIPSWeightsError(FileNotFoundError):
    """The VGG16 weights or the lpips package's heads are missing or are not what they should be."""


def torch_hub_vgg16() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def find_vgg16_weights(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The VGG16 state dict: `path`, $DISTGAN_VGG16 (either must exist), the distgan cache, torch hub's cache,
    else (with `download`) a sha256-checked download into the distgan cache."""
    looked = [user_cache() / VGG16_FILE, torch_hub_vgg16()]
    found = locate_weights(path, VGG16_ENV_VAR, "VGG16 weights", looked, LPIPSWeightsError)
    if found is not None:
        return found
    if download:
        return download_checked(VGG16_URL, looked[0], "sha256", VGG16_SHA256)
    raise LPIPSWeightsError(
        f"no VGG16 weights for the LPIPS distance of ppl; looked in: ${VGG16_ENV_VAR} (not set); {looked[0]}; "
        f"{looked[1]}. Get them with --download on a connected machine, or download {VGG16_URL} "
        f"(sha256 {VGG16_SHA256}) to one of those places, or pass --lpips-vgg PATH or set ${VGG16_ENV_VAR}"
    )


def lpips_heads() -> Path:
    """The linear heads' file inside the installed lpips package (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise LPIPSWeightsError("ppl needs the lpips package for the LPIPS heads: pip install lpips "
                                "(or pip install -e '.[ppl]')")
    heads = Path(next(iter(spec.submodule_search_locations))) / HEADS_FILE
    if not heads.is_file():
        raise LPIPSWeightsError(f"{heads}: missing from the installed lpips package; reinstall it (pip install "
                                "--force-reinstall lpips)")
    digest = file_digest(heads)
    if digest != HEADS_SHA256:
        raise LPIPSWeightsError(f"{heads}: sha256 {digest}, expected {HEADS_SHA256} (lpips 0.1.4's VGG heads); "
                                "other heads give distances that compare with no one else's")
    return heads


def load_vgg16_trunk(path: Path) -> nn.Sequential:
    """torchvision's VGG16 `features` up to relu5_3, weights from `path` (its `features.*` tensors; a
    classifier in the file is ignored). Read with the weights-only unpickler."""
    from torchvision.models import vgg16

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or a pickle of more than tensors
        raise LPIPSWeightsError(f"{path}: not a loadable VGG16 state dict ({type(exc).__name__}: "
                                f"{str(exc)[:200]})") from exc
    if not isinstance(state, dict):
        raise LPIPSWeightsError(f"{path}: holds a {type(state).__name__}, not a VGG16 state dict")
    features = vgg16(weights=None).features[:CUTS[-1]]
    wanted = features.state_dict()
    trunk = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    for key, tensor in wanted.items():
        if key not in trunk:
            raise LPIPSWeightsError(f"{path}: no tensor features.{key}; not a torchvision VGG16 state dict")
        if trunk[key].shape != tensor.shape:
            raise LPIPSWeightsError(f"{path}: features.{key} has shape {tuple(trunk[key].shape)}, VGG16's is "
                                    f"{tuple(tensor.shape)}")
    features.load_state_dict({k: trunk[k] for k in wanted})
    return features


class LPIPSDistance(nn.Module):
    """d(x0, x1) per image pair: images float [N, 3, H, W] in [-1, 1] (H, W >= 16), the LPIPS v0.1 VGG distance
    (the per-layer unit-normalised feature differences, squared, weighted by the heads, averaged over space,
    summed over the five layers)."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 download: bool = False):
        super().__init__()
        heads = lpips_heads()
        from lpips.lpips import NetLinLayer, ScalingLayer

        self.path = find_vgg16_weights(path, download)
        digest = file_digest(self.path)
        if digest != VGG16_SHA256:
            log.warning("%s is not torchvision's %s (sha256 %s...): its PPL compares only with figures from the "
                        "same file", self.path, VGG16_FILE, digest[:12])
        self.name = f"lpips-vgg16-v0.1:{digest[:12]}"
        features = load_vgg16_trunk(self.path)
        self.scaling = ScalingLayer()
        self.slices = nn.ModuleList(features[a:b] for a, b in zip((0, *CUTS[:-1]), CUTS))
        self.lins = nn.ModuleList(NetLinLayer(c, use_dropout=True) for c in CHANNELS)
        state = torch.load(heads, map_location="cpu", weights_only=True)
        self.lins.load_state_dict({k.removeprefix("lin"): v for k, v in state.items()})
        self.requires_grad_(False).eval().to(device)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        from lpips import normalize_tensor

        h = self.scaling(torch.cat([x0, x1]))
        total = torch.zeros(len(x0), device=h.device)
        for layer, lin in zip(self.slices, self.lins):
            h = layer(h)
            f0, f1 = normalize_tensor(h).chunk(2)
            total = total + lin((f0 - f1).square()).mean(dim=(1, 2, 3))
        return total
