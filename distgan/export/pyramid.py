"""A LAPGAN run -> ONE checked ONNX graph: z [B, total_nz] (+ labels [B]) -> images, every level chained.

Each level's newest checkpoint is assembled into the pyramid generator (`pyramid_run.assemble_generator`),
written as the run's `generator/` (what every other tool reads: `distgan-eval --run`, the metrics), and
exported by `export_onnx` like any family's G: the lapgan family says its input is the concatenated latent
(coarse level first, `LapganSpec.latent_slices`), so the metadata's `nz` is the total latent size and the
torch-free runtime, `distgan-sample` and the page draw from it as from any other generator.
"""

from __future__ import annotations

from pathlib import Path

from distgan.artifacts import save_generator
from distgan.export.onnx import ExportResult, export_onnx
from distgan.pyramid_run import LEVELS_DIR, SPEC_FILE, assemble_generator


def is_pyramid_run(source: Path) -> bool:
    """A LAPGAN run directory (its levels/lapgan.json), which `export_run_pyramid` exports."""
    return (Path(source) / LEVELS_DIR / SPEC_FILE).is_file()


def export_run_pyramid(run_path: Path, out: Path | None = None, **options) -> ExportResult:
    """Each level's newest checkpoint of a LAPGAN run, chained, as the run's generator/ and one ONNX graph
    (`options`: those of `export_onnx`)."""
    generator, info = assemble_generator(Path(run_path))
    save_generator(generator, Path(run_path) / "generator", info)
    return export_onnx(Path(run_path), out, **options)
