"""An exported image-conditioned model at run time (onnxruntime, numpy; never torch), and tiling.

The contract (`distgan.*` metadata_props, all strings) for models whose input is an image:
- `task`: what the model does (`super-resolution`; LAPGAN levels add their own);
- `scale`: output size / input size (an integer; 1 keeps the size);
- `channels`: image channels in and out; `noise_channels`: channels of an extra N(0, 1) input
  `noise` [N, k, H, W] beside the image (0 = none);
- `input_range`, `output_range`: "-1,1" (float32 NCHW both ways);
- `family`, `step`, `dataset`, `distgan_version`, `config_hash`, `spec` as for generators.
Inputs: `image` [N, C, H, W] (and `noise`), output `output` [N, C, scale*H, scale*W]; batch,
height and width are dynamic, so a model runs on any size and on tiles.

Tiling (`upscale`): tiles of `tile` input pixels overlap by at least `overlap`, spread evenly
over the image; each tile's output is weighted by linear ramps across the overlaps (1 elsewhere),
the weights normalised to sum to 1 at every pixel, and the rows written out as soon as no later
tile touches them, so a 4000x3000 photo needs memory for a band of tiles, not the whole float image.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

PREFIX = "distgan."
IMAGE_KEYS = ("task", "scale", "channels", "noise_channels", "input_range", "output_range", "family", "step")


class ImageModelError(ValueError):
    """A file that is not a usable distgan image-to-image model, or inputs it cannot take."""


@dataclass(frozen=True)
class ImageModelInfo:
    task: str
    scale: int
    channels: int
    noise_channels: int
    family: str
    step: int
    metadata: dict[str, str]

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> ImageModelInfo:
        missing = [PREFIX + k for k in IMAGE_KEYS if PREFIX + k not in meta]
        if missing:
            family = meta.get(PREFIX + "family")
            hint = f" (it is a {family!r} generator: draw from it with distgan-sample)" if family else ""
            raise ImageModelError(f"{source}: not a distgan image-to-image model; metadata_props lacks "
                                  f"{', '.join(missing)}{hint}")
        try:
            info = cls(task=meta[PREFIX + "task"], scale=int(meta[PREFIX + "scale"]),
                       channels=int(meta[PREFIX + "channels"]), noise_channels=int(meta[PREFIX + "noise_channels"]),
                       family=meta[PREFIX + "family"], step=int(meta[PREFIX + "step"]),
                       metadata={k: v for k, v in meta.items() if k.startswith(PREFIX)})
        except ValueError as exc:
            raise ImageModelError(f"{source}: malformed distgan metadata: {exc}") from None
        for key in ("input_range", "output_range"):
            if meta[PREFIX + key] != "-1,1":
                raise ImageModelError(f"{source}: unsupported {PREFIX}{key} {meta[PREFIX + key]!r}; expected '-1,1'")
        if info.scale < 1 or info.channels not in (1, 3) or info.noise_channels < 0:
            raise ImageModelError(f"{source}: unsupported scale {info.scale} / channels {info.channels} / "
                                  f"noise_channels {info.noise_channels}")
        return info


class OnnxImageModel:
    """One onnxruntime session on an exported image-to-image model: checked inputs, float images out."""

    def __init__(self, path: str | Path, *, threads: int = 0, task: str | None = None):
        """`task`, when given, must be the model's (e.g. `super-resolution` for distgan-upscale)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ImageModelError(f"{self.path}: no such ONNX file")
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ImageModelError(f"{self.path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = ImageModelInfo.from_metadata(meta, str(self.path))
        if task is not None and self.info.task != task:
            raise ImageModelError(f"{self.path}: a {self.info.task!r} model, not a {task!r} one")
        inputs = [i.name for i in self.session.get_inputs()]
        expected = ["image", "noise"] if self.info.noise_channels else ["image"]
        if inputs != expected:
            raise ImageModelError(f"{self.path}: inputs are {inputs}, expected {expected}")

    def run(self, images: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """float32 [N, C, H, W] in [-1, 1] (and noise [N, k, H, W]) -> float32 [N, C, scale*H, scale*W]."""
        n, c, h, w = images.shape
        if images.dtype != np.float32 or c != self.info.channels:
            raise ImageModelError(f"expected float32 images with {self.info.channels} channels, "
                                  f"got {images.dtype} {images.shape}")
        feeds = {"image": images}
        if self.info.noise_channels:
            if noise is None or noise.shape != (n, self.info.noise_channels, h, w):
                raise ImageModelError(f"expected noise of shape {(n, self.info.noise_channels, h, w)}")
            feeds["noise"] = noise.astype(np.float32, copy=False)
        return self.session.run(None, feeds)[0]


# --- tiling ------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` pixels covering 0..length, overlapping by >= `overlap`, evenly spread."""
    if tile <= 0 or tile >= length:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)] if count > 1 else [0]


def ramp_weights(starts: list[int], tile: int, length: int, scale: int) -> list[np.ndarray]:
    """Per tile, output-pixel weights along one axis: linear ramps across each overlap, summing to 1 everywhere."""
    size = min(tile, length) if tile > 0 else length
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(size * scale, np.float32)
        if i > 0:  # ramp up across the overlap with the previous tile
            width = (starts[i - 1] + size - start) * scale
            w[:width] = np.minimum(w[:width], (np.arange(width) + 0.5) / width)
        if i + 1 < len(starts):  # ramp down across the overlap with the next tile
            width = (start + size - starts[i + 1]) * scale
            w[size * scale - width:] = np.minimum(w[size * scale - width:], (width - np.arange(width) - 0.5) / width)
        weights.append(w)
    total = np.zeros(length * scale, np.float32)
    for start, w in zip(starts, weights):
        total[start * scale: start * scale + w.size] += w
    return [w / total[start * scale: start * scale + w.size] for start, w in zip(starts, weights)]


def to_model(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [1, C, H, W] in [-1, 1]."""
    return (image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]


def to_uint8(rows: np.ndarray) -> np.ndarray:
    """float [C, H, W] in [-1, 1] -> uint8 [H, W, C] (distgan's one rounding: round((x + 1) * 127.5))."""
    return ((rows + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8).transpose(1, 2, 0)


def upscale(model: OnnxImageModel, image: np.ndarray, tile: int = 256, overlap: int = 16,
            on_tile: Callable[[], None] | None = None, float_output: bool = False) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [scale*H, scale*W, C], tile by tile (`tile` 0: the whole image at once).

    `on_tile` is called after each tile (a progress bar's update); `float_output` gives the model's
    float32 values in [-1, 1] instead of uint8 (for measurements).
    """
    h, w, c = image.shape
    s = model.info.scale
    if tile and not 0 <= overlap < tile / 2:
        raise ImageModelError(f"overlap {overlap} must be in [0, tile/2) for tile {tile}")
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = (min(tile, h), min(tile, w)) if tile else (h, w)
    wy, wx = ramp_weights(ys, tile, h, s), ramp_weights(xs, tile, w, s)
    out = np.empty((h * s, w * s, c), np.float32 if float_output else np.uint8)
    band = np.zeros((c, 0, w * s), np.float32)  # output rows band_top.. still to receive tiles
    band_top = 0
    for r, y in enumerate(ys):
        bottom = (y + th) * s
        band = np.concatenate([band, np.zeros((c, bottom - band_top - band.shape[1], w * s), np.float32)], axis=1)
        for x, weight_x in zip(xs, wx):
            sr = model.run(to_model(image[y:y + th, x:x + tw]))[0]
            rows = slice(y * s - band_top, bottom - band_top)
            band[:, rows, x * s:(x + tw) * s] += sr * wy[r][:, None] * weight_x[None, :]
            if on_tile is not None:
                on_tile()
        done = ys[r + 1] * s if r + 1 < len(ys) else h * s  # no later tile reaches above this row
        finished = band[:, : done - band_top]
        out[band_top:done] = finished.transpose(1, 2, 0) if float_output else to_uint8(finished)
        band, band_top = band[:, done - band_top:], done
    return out
