"""The models a server offers: loaded and checked at start, named, described as JSON.

Two kinds, told apart by their metadata: generators (`distgan-export` of a GAN: `OnnxGenerator`) and
super-resolution models (an SRGAN export, `distgan.task=super-resolution`: `OnnxImageModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from distgan.image_runtime import ImageModelError, OnnxImageModel
from distgan.runtime import MAX_SEED, PSI_RANGE, ModelError, OnnxGenerator

SR_TASK = "super-resolution"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (set by distgan-serve's flags)."""

    max_n: int = 256  # images per /api/sample
    max_steps: int = 64  # frames per walk
    max_images: int = 640  # images one request renders (class=all draws every class per seed or walk)
    max_query_bytes: int = 2048
    max_upload_bytes: int = 20_000_000  # one /api/upscale body
    max_upscale_pixels: int = 2048 * 2048  # pixels of one /api/upscale output (scale^2 x the input's)


@dataclass(frozen=True)
class ServedModel:
    id: str  # the shortest path suffix that tells the files apart: "generator", "demo/generator"
    generator: OnnxGenerator

    def describe(self, full: bool = False) -> dict[str, Any]:
        """What the page's model panel shows; `full` adds every metadata_props pair."""
        info, g = self.generator.info, self.generator
        out = {
            "id": self.id, "file": g.path.name, "path": str(g.path), "sha256": g.sha256,
            "family": info.family, "dataset": info.dataset, "step": info.step, "nz": info.nz,
            "channels": info.channels, "height": info.height, "width": info.width,
            "mode": "L" if info.channels == 1 else "RGB", "classes": list(info.class_names),
            "conditional": g.conditional, "quantization": info.quantization,
            "latent": g.metadata.get("distgan.latent", "standard_normal"),
            "num_ws": info.num_ws,  # style layers (0: no style mixing; /api/mixing needs > 0)
            "stages": len(info.stages),  # a pyramid's stage outputs (0: none; /api/stages needs > 0)
        }
        if full:
            out["metadata"] = g.metadata
        return out


@dataclass(frozen=True)
class ServedUpscaler:
    id: str
    model: OnnxImageModel

    def describe(self) -> dict[str, Any]:
        """What the page's upscale card shows."""
        info, m = self.model.info, self.model
        return {"id": self.id, "file": m.path.name, "path": str(m.path), "sha256": m.sha256, "task": info.task,
                "family": info.family, "scale": info.scale, "channels": info.channels,
                "mode": "L" if info.channels == 1 else "RGB", "step": info.step,
                "dataset": info.metadata.get("distgan.dataset", "")}


def _ids(paths: list[Path]) -> list[str]:
    """The shortest path suffixes (without .onnx) that are all different."""
    parts = [p.with_suffix("").parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        ids = ["/".join(p[-depth:]) for p in parts]
        if len(set(ids)) == len(ids):
            return ids
    return [str(p) for p in paths]  # unreachable for distinct resolved paths


def model_files(given: list[Path]) -> list[Path]:
    """The files to serve: each path given, a folder standing for every .onnx directly in it (sorted)."""
    out = []
    for path in map(Path, given):
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(p for p in path.glob("*.onnx") if p.is_file())
        if not found:
            raise ModelError(f"{path}: a folder with no .onnx file in it (distgan-export --onnx RUN --out FILE.onnx "
                             f"writes one)")
        out += found
    return out


def _task(path: Path) -> str | None:
    """The file's `distgan.task` (image-to-image models have one, generators none); None also for a file onnx
    cannot parse, which OnnxGenerator then refuses with its own message."""
    try:
        props = onnx.load(str(path), load_external_data=False).metadata_props
    except Exception:  # onnx raises protobuf's DecodeError and others: the generator loader names the problem
        return None
    return next((p.value for p in props if p.key == "distgan.task"), None)


def _load_upscaler(path: Path, given: Path, threads: int) -> OnnxImageModel:
    """An SR model, run once on a small image: output exactly scale x the input."""
    try:
        model = OnnxImageModel(path, threads=threads, task=SR_TASK)
        out = model.run(np.zeros((1, model.info.channels, 5, 7), np.float32))
    except ImageModelError as exc:
        raise ModelError(f"{given}: {str(exc).removeprefix(f'{path}: ')}") from None
    except Exception as exc:  # onnxruntime's own errors: a graph that does not fit its metadata
        raise ModelError(f"{given}: cannot upscale an image with it: {str(exc).splitlines()[0]}") from None
    s = model.info.scale
    if out.shape != (1, model.info.channels, 5 * s, 7 * s):
        raise ModelError(f"{given}: a 5x7 image came out {list(out.shape[2:])}, not {[5 * s, 7 * s]} "
                         f"(distgan.scale {s})")
    return model


def load_models(paths: list[Path], threads: int = 0) -> list[ServedModel | ServedUpscaler]:
    """Every file loaded and run once (one image) before the server starts; errors name the file. Generators and
    super-resolution models in the order given."""
    resolved = [Path(p).resolve() for p in paths]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise ModelError(f"{paths[i]}: given twice")
    models: list[OnnxGenerator | OnnxImageModel] = []
    for path, given in zip(resolved, paths):
        task = _task(path) if path.is_file() else None
        if task is not None:
            if task != SR_TASK:
                raise ModelError(f"{given}: a {task!r} model; distgan-serve serves generators and "
                                 f"{SR_TASK!r} models")
            models.append(_load_upscaler(path, Path(given), threads))
            continue
        generator = OnnxGenerator(path, threads=threads)
        info = generator.info
        try:
            images = generator.sample(0).images
        except Exception as exc:  # onnxruntime's own errors: a graph that does not fit its metadata
            raise ModelError(f"{given}: cannot draw an image with it: {exc}") from exc
        if images.shape[1:] != (info.height, info.width, info.channels):
            raise ModelError(f"{given}: its images are {list(images.shape[1:])} (H, W, C) but its metadata says "
                             f"{[info.height, info.width, info.channels]}")
        models.append(generator)
    return [ServedUpscaler(i, m) if isinstance(m, OnnxImageModel) else ServedModel(i, m)
            for i, m in zip(_ids(resolved), models)]


def limits_json(limits: Limits) -> dict[str, Any]:
    return {"max_n": limits.max_n, "max_steps": limits.max_steps, "max_images": limits.max_images,
            "seed": [0, MAX_SEED], "psi": list(PSI_RANGE), "max_upload_bytes": limits.max_upload_bytes,
            "max_upscale_pixels": limits.max_upscale_pixels}
