"""Export a trained generator to ONNX: `export_onnx(run_dir)`, the `distgan-export` CLI.

This package needs torch; the torch-free side (loading and sampling an exported model)
is `distgan.runtime` and `distgan.sample`.
"""

from distgan.export.onnx import ExportError, ExportResult, QuantizationReport, export_onnx

__all__ = ["ExportError", "ExportResult", "QuantizationReport", "export_onnx"]
