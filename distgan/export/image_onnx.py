"""Export an image-conditioned model (image [+ noise] -> image) to ONNX with dynamic batch, height and width.

The counterpart of `distgan/image_runtime.py` (its metadata contract is written there). The
model must be fully convolutional: the export is checked against torch at two different input
sizes (and batch sizes) before the file appears, by one rename, with its metadata.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from distgan.image_runtime import IMAGE_KEYS, PREFIX

DEFAULT_OPSET = 17
TOLERANCE = 1e-4  # max |onnxruntime - torch| on outputs in [-1, 1]
PARITY_SHAPES = ((1, 24, 20), (2, 37, 53))  # (batch, height, width): even and odd, two batch sizes


class ImageExportError(RuntimeError):
    """The exported model does not reproduce torch."""


def _feeds(channels: int, noise_channels: int, batch: int, height: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(height * 1000 + width)
    feeds = {"image": rng.uniform(-1, 1, (batch, channels, height, width)).astype(np.float32)}
    if noise_channels:
        feeds["noise"] = rng.standard_normal((batch, noise_channels, height, width), dtype=np.float32)
    return feeds


def parity(path: Path, module: nn.Module, channels: int, noise_channels: int = 0,
           shapes: tuple[tuple[int, int, int], ...] = PARITY_SHAPES) -> dict[str, float]:
    """Max |onnxruntime - torch| per input shape ("NxHxW"), on the same seeded inputs."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = {}
    for batch, height, width in shapes:
        feeds = _feeds(channels, noise_channels, batch, height, width)
        got = session.run(None, feeds)[0]
        with torch.inference_mode():
            want = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        if got.shape != want.shape:
            raise ImageExportError(f"onnxruntime gave {got.shape}, torch {want.shape} at {batch}x{height}x{width}")
        diffs[f"{batch}x{height}x{width}"] = float(np.abs(got.astype(np.float64) - want).max())
    return diffs


def export_image_model(module: nn.Module, out: Path, *, channels: int, metadata: dict[str, str],
                       noise_channels: int = 0, opset: int = DEFAULT_OPSET) -> dict[str, float]:
    """Export `module` (eval mode) to `out` with `metadata` (keys without the `distgan.` prefix: at least
    image_runtime.IMAGE_KEYS but the ranges and noise_channels, which are set here); returns the parity."""
    values = {"input_range": "-1,1", "output_range": "-1,1", "channels": str(channels),
              "noise_channels": str(noise_channels), **{k: str(v) for k, v in metadata.items()}}
    missing = [k for k in IMAGE_KEYS if k not in values]
    if missing:
        raise ValueError(f"image model metadata lacks {', '.join(missing)}")
    module = module.eval()
    names = ["image", "noise"] if noise_channels else ["image"]
    example = tuple(torch.from_numpy(v) for v in _feeds(channels, noise_channels, 2, 16, 16).values())
    dynamic = {n: {0: "batch", 2: "height", 3: "width"} for n in names}
    dynamic["output"] = {0: "batch", 2: "out_height", 3: "out_width"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with TemporaryDirectory(dir=out.parent, prefix=".export-") as tmpdir:
        tmp = Path(tmpdir) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: its dynamic_axes suit here
            torch.onnx.export(module, example, str(tmp), input_names=names, output_names=["output"],
                              opset_version=opset, dynamo=False, dynamic_axes=dynamic)
        diffs = parity(tmp, module, channels, noise_channels)
        if max(diffs.values()) > TOLERANCE:
            raise ImageExportError(f"onnxruntime differs from torch by {max(diffs.values()):.3g} > {TOLERANCE:g} "
                                   f"({diffs})")
        model = onnx.load(str(tmp))
        values["parity_max_abs"] = f"{max(diffs.values()):.3g}"
        onnx.helper.set_model_props(model, {PREFIX + k: v for k, v in values.items()})
        model.doc_string = (f"distgan {values['task']} model: image [N, {channels}, H, W] in [-1, 1] -> "
                            f"[N, {channels}, {values['scale']}H, {values['scale']}W]; see metadata_props distgan.*")
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    return diffs
