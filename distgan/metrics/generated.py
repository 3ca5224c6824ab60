"""Where generated images come from: a trained torch generator or an ONNX export, behind one interface.

Both draw the same latents for the same seed (z ~ N(0, I) from a CPU
generator; for conditional models balanced labels, each class n/K times in a
seeded order), so a torch generator and its ONNX export are scored on the same
samples and their figures differ only by the export. Both yield what the
feature extractors take: uint8 NHWC batches, plus the labels they were drawn for.

The ONNX side reads only the export contract (see README "Evaluation"): input
`z` float32 [B, nz], `labels` int64 [B] when `distgan.num_classes` > 0, output
`images` float32 NCHW in [-1, 1] or uint8 NHWC, described by `distgan.*`
metadata_props.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from distgan.artifacts import load_generator
from distgan.models import generate, latent_size
from distgan.runtime import to_uint8_nhwc


@dataclass
class GeneratedBatch:
    images: torch.Tensor  # uint8 [B, H, W, C]
    labels: torch.Tensor | None  # int64 [B], None when unconditional


@dataclass
class SourceInfo:
    """What a generator says about itself; goes into the evaluation JSON."""

    kind: str  # "torch" | "onnx"
    path: str
    nz: int
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    dataset: str = ""
    step: int | None = None
    config_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def latents(n: int, nz: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n latents and, when conditional, balanced labels (every class floor or ceil of n/K times), seeded."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, nz, generator=gen)
    if num_classes <= 0:
        return z, None
    labels = torch.arange(n) % num_classes
    return z, labels[torch.randperm(n, generator=gen)]


class TorchSource:
    """A run directory or generator/ directory (the EMA generator), or a live module during training."""

    def __init__(self, generator: torch.nn.Module, info: SourceInfo, device: str | torch.device = "cpu"):
        self.generator, self.info, self.device = generator.eval(), info, torch.device(device)
        self.generator.to(self.device)

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TorchSource":
        generator, meta = load_generator(Path(directory))
        spec = generator.spec
        info = SourceInfo("torch", str(directory), latent_size(generator), spec.num_classes if spec.conditional else 0,
                          (spec.channels, spec.height, spec.width), meta.get("dataset", ""),
                          meta.get("step"), meta.get("config_hash", ""))
        return cls(generator, info, device)

    @torch.inference_mode()
    def batches(self, n: int, batch_size: int = 500, seed: int = 0) -> Iterator[GeneratedBatch]:
        z, labels = latents(n, self.info.nz, self.info.num_classes, seed)
        for start in range(0, n, batch_size):
            zb = z[start:start + batch_size].to(self.device)
            lb = labels[start:start + batch_size] if labels is not None else None
            images = generate(self.generator, zb, lb.to(self.device) if lb is not None else None)
            yield GeneratedBatch(to_uint8_nhwc(images.float()).cpu(), lb)


REQUIRED_META = ("distgan.nz", "distgan.num_classes", "distgan.channels", "distgan.height", "distgan.width")


class OnnxSource:
    """An ONNX generator run with onnxruntime (CUDA provider when there is one)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), providers=providers)
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ValueError(f"{self.path}: metadata_props lack {missing}; not a distgan export "
                             f"(has {sorted(meta)})")
        self.meta = meta
        self.layout = meta.get("distgan.output_layout", "NCHW")
        self.dtype = meta.get("distgan.output_dtype", "float32")
        if (self.layout, self.dtype) not in (("NCHW", "float32"), ("NHWC", "uint8")):
            raise ValueError(f"{self.path}: output {self.layout}/{self.dtype} is not in the contract "
                             "(NCHW float32 in [-1, 1], or NHWC uint8)")
        inputs = {i.name for i in self.session.get_inputs()}
        num_classes = int(meta["distgan.num_classes"])
        expected = {"z", "labels"} if num_classes > 0 else {"z"}
        if inputs != expected:
            raise ValueError(f"{self.path}: inputs {sorted(inputs)}, the contract says {sorted(expected)} "
                             f"for distgan.num_classes={num_classes}")
        step = meta.get("distgan.step")
        self.info = SourceInfo(
            "onnx", str(self.path), int(meta["distgan.nz"]), num_classes,
            (int(meta["distgan.channels"]), int(meta["distgan.height"]), int(meta["distgan.width"])),
            meta.get("distgan.dataset", ""), int(step) if step not in (None, "") else None,
            meta.get("distgan.config_hash", ""),
            {"quantization": meta.get("distgan.quantization", "none"), "providers": self.session.get_providers(),
             "class_names": json.loads(meta.get("distgan.class_names", "[]"))},
        )

    def batches(self, n: int, batch_size: int = 500, seed: int = 0) -> Iterator[GeneratedBatch]:
        z, labels = latents(n, self.info.nz, self.info.num_classes, seed)
        for start in range(0, n, batch_size):
            feed = {"z": z[start:start + batch_size].numpy().astype(np.float32)}
            lb = labels[start:start + batch_size] if labels is not None else None
            if lb is not None:
                feed["labels"] = lb.numpy().astype(np.int64)
            out = torch.from_numpy(self.session.run(None, feed)[0])
            images = out if self.dtype == "uint8" else to_uint8_nhwc(out)
            c, h, w = self.info.image_shape
            if tuple(images.shape[1:]) != (h, w, c):
                raise ValueError(f"{self.path}: output shape {tuple(out.shape)} does not fit the metadata "
                                 f"({c}x{h}x{w}, {self.layout})")
            yield GeneratedBatch(images, lb)


def open_source(run: str | Path | None = None, onnx: str | Path | None = None,
                device: str | torch.device = "cpu") -> TorchSource | OnnxSource:
    """Exactly one of a run/generator directory or an ONNX file."""
    if (run is None) == (onnx is None):
        raise ValueError("give exactly one of a run directory or an ONNX file")
    return TorchSource.from_dir(run, device) if run is not None else OnnxSource(onnx, device)
