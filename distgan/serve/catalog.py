"""The models a server offers: loaded and checked at start, named, described as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distgan.runtime import MAX_SEED, PSI_RANGE, ModelError, OnnxGenerator


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (set by distgan-serve's flags)."""

    max_n: int = 256  # images per /api/sample
    max_steps: int = 64  # frames per walk
    max_images: int = 640  # images one request renders (class=all draws every class per seed or walk)
    max_query_bytes: int = 2048


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


def load_models(paths: list[Path], threads: int = 0) -> list[ServedModel]:
    """Every file loaded and run once (one image) before the server starts; errors name the file."""
    resolved = [Path(p).resolve() for p in paths]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise ModelError(f"{paths[i]}: given twice")
    models = []
    for path, given in zip(resolved, paths):
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
    return [ServedModel(i, g) for i, g in zip(_ids(resolved), models)]


def limits_json(limits: Limits) -> dict[str, Any]:
    return {"max_n": limits.max_n, "max_steps": limits.max_steps, "max_images": limits.max_images,
            "seed": [0, MAX_SEED], "psi": list(PSI_RANGE)}
