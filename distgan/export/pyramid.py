"""A LAPGAN pyramid -> ONE checked ONNX graph: z [B, total_nz] (+ labels [B]) -> images, every level chained.

The graph takes the concatenated latent (coarse level first, `LapganSpec.latent_slices`) and the labels,
so the metadata's `nz` is the total latent size and the torch-free runtime, `distgan-sample` and the page
draw from it exactly as from any other generator. The parity check, metadata and optimised copy are the
ones of `onnx.py`; the reference is the torch pyramid itself (`LaplacianGenerator.forward`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from distgan.export.onnx import (DEFAULT_OPSET, FP32_TOLERANCE, ExportError, ExportResult, _export_checked,
                                 _max_diff, _save_optimized, _write_metadata, build_metadata, optimized_output)
from distgan.models.lapgan import LaplacianGenerator
from distgan.pyramid_run import LEVELS_DIR, SPEC_FILE, assemble_generator

INFO_KEYS = ("step", "dataset", "classes", "distgan_version", "config_hash")


def export_pyramid_onnx(generator: LaplacianGenerator, info: dict[str, Any], out: Path, *,
                        opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export the whole pyramid (eval mode) to `out` (+ its optimised copy), each within 1e-4 of torch.

    `info` is what generator.json holds besides the spec (INFO_KEYS). Files appear only when every check
    passed. Raises ExportError when no exporter matches torch, ValueError for missing info keys."""
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise ValueError(f"lapgan export: info lacks {', '.join(missing)}")
    generator = generator.eval()
    spec = generator.spec.to_dict()  # nz: the concatenated latent's size, what clients draw
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with TemporaryDirectory(dir=out.parent, prefix=".export-") as tmpdir:
        tmp = Path(tmpdir)
        model = tmp / "fp32.onnx"
        exporter, parity = _export_checked(generator, generator, spec, model, opset, FP32_TOLERANCE, notes)
        metadata = build_metadata({**info, "spec": spec}, uint8_output=False, quantization="none",
                                  exporter=exporter, parity=max(parity.values()))
        metadata["distgan.lapgan_levels"] = json.dumps([list(s) for s in generator.spec.sizes])
        _write_metadata(model, metadata)
        optimized = tmp / "optimized.onnx"
        _save_optimized(model, optimized, metadata)
        diff = max(_max_diff(optimized, generator, spec).values())
        if diff > FP32_TOLERANCE:
            raise ExportError(f"onnxruntime's optimised copy differs from torch by {diff:.3g}")
        os.replace(model, out)
        os.replace(optimized, optimized_output(out))
    return ExportResult(path=out, optimized_path=optimized_output(out), exporter=exporter, parity=parity,
                        metadata=metadata, notes=notes)


def is_pyramid_run(source: Path) -> bool:
    """A LAPGAN run directory (its levels/lapgan.json), which `export_run_pyramid` exports."""
    return (Path(source) / LEVELS_DIR / SPEC_FILE).is_file()


def export_run_pyramid(run_path: Path, out: Path, *, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Each level's newest checkpoint of a LAPGAN run, chained, as one ONNX graph at `out`."""
    generator, info = assemble_generator(Path(run_path))
    return export_pyramid_onnx(generator, info, out, opset=opset)
