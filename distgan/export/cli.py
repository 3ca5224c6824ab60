"""`distgan-export --onnx RUN_DIR_OR_GENERATOR_DIR [--out FILE] [--opset N] [--quantize int8] [--uint8-output]`,
or `distgan-export --web OUT_DIR RUN_OR_ONNX [--int8] [--ort-web PATH|cdn]` (a static site: distgan/export/web.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distgan.export.onnx import (DEFAULT_OPSET, FP32_TOLERANCE, QUANTIZATIONS, UINT8_TOLERANCE, ExportError,
                                 export_onnx)
from distgan.export.web import export_web
from distgan.export.pyramid import export_run_pyramid, is_pyramid_run
from distgan.runtime import PREFIX


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distgan-export",
        description="Export a run's EMA generator to ONNX, checked against torch (batch 1 and 37).")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--onnx", type=Path, metavar="RUN_DIR_OR_GENERATOR_DIR",
                      help="a run directory (runs/NAME) or its generator/ directory")
    what.add_argument("--web", nargs=2, type=Path, metavar=("OUT_DIR", "RUN_OR_ONNX"),
                      help="write a static site that draws the model's images in the visitor's browser")
    parser.add_argument("--out", type=Path, help="the .onnx file (default: generator.onnx in that directory)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="static int8 (QDQ) quantisation; fp32 by default")
    parser.add_argument("--uint8-output", action="store_true",
                        help="output uint8 [batch, H, W, C] in 0..255 instead of float [batch, C, H, W] in [-1, 1]")
    parser.add_argument("--int8", action="store_true", help="--web: publish the int8 model (exported from a run)")
    parser.add_argument("--ort-web", default="local", metavar="PATH|cdn",
                        help="--web: onnxruntime-web's dist/ folder to copy (default: node_modules beside the project, "
                             "made by `npm ci`), or cdn: load the pinned release from a CDN with integrity hashes")
    args = parser.parse_args(argv)
    if args.web:
        return web_main(parser, args)
    try:
        export = export_run_pyramid if is_pyramid_run(args.onnx) else export_onnx  # LAPGAN: its levels, chained
        result = export(args.onnx, args.out, opset=args.opset, uint8_output=args.uint8_output, quantize=args.quantize)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        parser.exit(2, f"distgan-export: error: {exc}\n")
    meta = result.metadata
    for note in result.notes:
        print(f"note: {note}")
    print(f"exporter: {result.exporter}, opset {meta[PREFIX + 'opset']}")
    parity = ", ".join(f"batch {b}: {d:.2e}" for b, d in result.parity.items())
    print(f"parity fp32 max |onnxruntime - torch|: {parity} (limit {FP32_TOLERANCE:g})")
    if result.uint8_parity is not None:
        grey = ", ".join(f"batch {b}: {d:.0f}" for b, d in result.uint8_parity.items())
        print(f"parity uint8 output, max grey-level difference: {grey} (limit {UINT8_TOLERANCE})")
    if result.quantization is not None:
        q = result.quantization
        unit = " grey levels" if args.uint8_output else ""
        print(f"int8 vs torch fp32: max |diff| {q.max_abs:.3g}{unit}, mean {q.mean_abs:.3g}{unit}")
        print(f"int8 speed: {q.int8_images_per_s:,.0f} images/s vs fp32 {q.fp32_images_per_s:,.0f} "
              f"({q.speedup:.2f}x, batch 64, this machine)")
    classes = meta[PREFIX + "class_names"] if meta[PREFIX + "num_classes"] != "0" else "unconditional"
    print(f"model: {meta[PREFIX + 'family']}, z [batch, {meta[PREFIX + 'nz']}] -> {meta[PREFIX + 'output_dtype']} "
          f"{meta[PREFIX + 'output_layout']} {meta[PREFIX + 'channels']}x{meta[PREFIX + 'height']}x"
          f"{meta[PREFIX + 'width']}, step {meta[PREFIX + 'step']}, classes: {classes}")
    print(f"wrote {result.path}")
    print(f"wrote {result.optimized_path} (onnxruntime basic optimisations: portable)")
    return 0


def web_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    out, source = args.web
    try:
        site = export_web(out, source, int8=args.int8, ort=args.ort_web)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        parser.exit(2, f"distgan-export: error: {exc}\n")
    info = site.info
    print(f"model: {info.family}, {info.channels}x{info.height}x{info.width}, quantization {info.quantization}, "
          f"{site.sizes['model.onnx'] / 1e6:.2f} MB")
    print(f"onnxruntime-web: {'copied to ' + str(site.path / 'ort') if site.ort == 'local' else site.ort}")
    print(f"wrote {site.path}/ ({len(site.sizes)} files, {site.total_bytes / 1e6:.1f} MB); try it: "
          f"cd {site.path} && python -m http.server, then open http://localhost:8000/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
