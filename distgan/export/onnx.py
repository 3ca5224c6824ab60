"""A run's EMA generator -> a checked, self-describing ONNX model.

    export_onnx(runs/NAME)  ->  runs/NAME/generator.onnx      (what clients load)
                                runs/NAME/generator.opt.onnx  (onnxruntime-optimised copy)

Steps: load `generator/` (eval mode), rewrite it for inference (`rewrite.py`), export
with a dynamic batch, compare onnxruntime with the *original* torch generator on the
same inputs (batch 1 and 37; stop above 1e-4 in fp32), write the metadata clients need
(`distgan.runtime.REQUIRED_KEYS`), save an optimised copy and check it too; optionally
quantise to int8 and report its error and speed. Files appear only when every check
passed (written beside the target, then renamed).

Exporters: the dynamo exporter (torch's default, needs onnxscript) is tried first and
the TorchScript exporter second; whichever gives a model that fails the parity check
is discarded, since the dynamo exporter has shipped numerically wrong graphs before.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

import distgan
from distgan.artifacts import load_generator
from distgan.export.quantize import quantize_int8
from distgan.export.rewrite import inference_generator
from distgan.models.stylegan2 import ConditionalStyleInputs, StyleInputs
from distgan.runtime import PREFIX, PSI_RANGE, REQUIRED_KEYS, STYLE_INPUTS

DEFAULT_OPSET = 18
PARITY_BATCHES = (1, 37)
FP32_TOLERANCE = 1e-4  # max |onnxruntime - torch| on images in [-1, 1]
UINT8_TOLERANCE = 1  # one grey level: a float difference of 1e-7 can flip a rounding
QUANTIZATIONS = ("int8",)
# Keys generator.json must hold besides the spec (the trainer writes them all).
INFO_KEYS = ("step", "dataset", "classes", "distgan_version", "config_hash")


class ExportError(RuntimeError):
    """No exporter produced a model that matches torch."""


@dataclass
class QuantizationReport:
    """The int8 model against torch fp32 (batch 37 of the parity check; in the output's units: [-1, 1] or grey
    levels) and its speed against the fp32 model (batch 64, this machine)."""

    max_abs: float
    mean_abs: float
    fp32_images_per_s: float
    int8_images_per_s: float

    @property
    def speedup(self) -> float:
        return self.int8_images_per_s / self.fp32_images_per_s


@dataclass
class ExportResult:
    path: Path  # the model asked for (int8 when quantize="int8")
    optimized_path: Path  # the same model after onnxruntime's portable (basic) graph optimisations
    exporter: str  # "dynamo" or "torchscript"
    parity: dict[int, float]  # batch size -> max |onnxruntime fp32 - torch| (the float graph)
    metadata: dict[str, str]
    uint8_parity: dict[int, float] | None = None  # batch -> max grey-level difference, with uint8_output
    quantization: QuantizationReport | None = None
    notes: list[str] = field(default_factory=list)  # e.g. why an exporter was skipped

    @property
    def max_abs_diff(self) -> float:
        return max(self.parity.values())


class Uint8Output(nn.Module):
    """The generator with the conversion to uint8 [B, H, W, C] inside the graph (what an image file wants)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = self.generator(z, labels)
        return torch.round(torch.clamp((images + 1.0) * 127.5, 0.0, 255.0)).to(torch.uint8).permute(0, 2, 3, 1)


# --- inputs -------------------------------------------------------------------------


def _inputs(spec: dict[str, Any], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random feeds for every input of the graph; a style-based generator's (spec["num_ws"] > 0) include psi in
    0..2, z2 and mix_layer in 0..num_ws, so parity covers truncation and every mixing point."""
    rng = np.random.default_rng(seed)
    feeds = {"z": rng.standard_normal((batch, spec["nz"]), dtype=np.float32)}
    if spec["conditional"]:
        feeds["labels"] = rng.integers(0, spec["num_classes"], batch, dtype=np.int64)
    if spec.get("num_ws", 0):
        feeds["psi"] = rng.uniform(*PSI_RANGE, batch).astype(np.float32)
        feeds["z2"] = rng.standard_normal((batch, spec["nz"]), dtype=np.float32)
        feeds["mix_layer"] = rng.integers(0, spec["num_ws"] + 1, batch, dtype=np.int64)
    return feeds


def _torch_outputs(module: nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def _session(path: Path, level: ort.GraphOptimizationLevel | None = None,
             optimized_path: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_diff(path: Path, reference: nn.Module | Path, spec: dict[str, Any]) -> dict[int, float]:
    """Max |onnxruntime - reference| per parity batch size, on the same inputs; the reference is
    a torch module or another ONNX file."""
    session = _session(path)
    other = _session(reference) if isinstance(reference, Path) else None
    diffs = {}
    for batch in PARITY_BATCHES:
        feeds = _inputs(spec, batch, seed=batch)
        got = session.run(["images"], feeds)[0].astype(np.float64)
        want = other.run(["images"], feeds)[0] if other is not None else _torch_outputs(reference, feeds)
        diffs[batch] = float(np.abs(got - want.astype(np.float64)).max())
    return diffs


# --- exporters ----------------------------------------------------------------------


def _export_dynamo(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int,
                   names: list[str]) -> None:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "axis name batch will not be used": z and labels share it
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["images"], opset_version=opset,
                          dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes={n: {0: batch} for n in names})


def _export_torchscript(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int,
                        names: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose, see above
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["images"], opset_version=opset,
                          dynamo=False, dynamic_axes={n: {0: "batch"} for n in [*names, "images"]})


def drop_empty_optional_inputs(path: Path) -> None:
    """Remove trailing empty ("") optional inputs in place; the graph computes the same.

    The TorchScript exporter writes Pad(x, pads, "") for F.pad, and onnxruntime's Pad + Conv
    fusion only takes a Pad whose constant value is absent or a constant: with the empty
    name, every phase convolution (`phases.py`) would run behind a Pad node of its own.
    """
    model = onnx.load(str(path))
    changed = False
    for node in model.graph.node:
        while node.input and node.input[-1] == "":
            node.input.pop()
            changed = True
    if changed:
        onnx.save(model, str(path))


def _exporters() -> list[tuple[str, Callable[..., None]]]:
    found = [("torchscript", _export_torchscript)]
    if importlib.util.find_spec("onnxscript") is not None:
        found.insert(0, ("dynamo", _export_dynamo))
    return found


def _export_checked(module: nn.Module, reference: nn.Module, spec: dict[str, Any], path: Path, opset: int,
                    tolerance: float, notes: list[str]) -> tuple[str, dict[int, float]]:
    """Export with the first exporter whose model matches `reference` within `tolerance`."""
    example_feeds = _inputs(spec, 2, seed=0)  # batch 2: 1 would specialise
    names, example = list(example_feeds), tuple(torch.from_numpy(v) for v in example_feeds.values())
    if len(_exporters()) == 1 and not notes:
        notes.append("dynamo exporter not available (needs onnxscript); used the TorchScript exporter")
    failures = []
    for name, export in _exporters():
        try:
            export(module, example, path, opset, names)
            drop_empty_optional_inputs(path)
            diffs = _max_diff(path, reference, spec)
        except Exception as exc:  # an exporter bug must not hide the other exporter
            failures.append(f"{name} exporter failed: {type(exc).__name__}: {exc}")
            continue
        if max(diffs.values()) <= tolerance:
            notes.extend(failures)
            return name, diffs
        failures.append(f"{name} exporter: max |onnxruntime - torch| = {max(diffs.values()):.3g} > {tolerance:g}")
    raise ExportError("no exporter gave a model that matches torch: " + "; ".join(failures))


# --- metadata -------------------------------------------------------------------------


def build_metadata(info: dict[str, Any], *, uint8_output: bool, quantization: str, exporter: str,
                   parity: float, num_ws: int = 0) -> dict[str, str]:
    """Everything a client needs, as `distgan.*` string pairs (keys: distgan.runtime.REQUIRED_KEYS + extras)."""
    spec = info["spec"]
    classes = list(info["classes"]) if spec["conditional"] else []
    if len(classes) != (spec["num_classes"] if spec["conditional"] else 0):
        classes = [str(i) for i in range(spec["num_classes"])]  # a data set without names
    values = {
        "family": spec["arch"], "nz": spec["nz"], "channels": spec["channels"], "height": spec["height"],
        "width": spec["width"], "num_classes": len(classes), "class_names": json.dumps(classes),
        "output_range": "0,255" if uint8_output else "-1,1", "output_layout": "NHWC" if uint8_output else "NCHW",
        "output_dtype": "uint8" if uint8_output else "float32", "step": info["step"],
        "dataset": info["dataset"], "distgan_version": info["distgan_version"],
        "config_hash": info["config_hash"], "quantization": quantization,
        # Extras: how to draw z, how the model was made, the full architecture.
        "latent": "standard_normal",
        "inputs": ",".join(["z", "labels"][:2 if classes else 1] + (list(STYLE_INPUTS) if num_ws else [])),
        "exporter": exporter, "fp32_parity_max_abs": f"{parity:.3g}",
        "export_version": distgan.__version__, "spec": json.dumps(spec, sort_keys=True),
    }
    if num_ws:  # a style-based model: truncation in W and style mixing are inputs (distgan.runtime.STYLE_INPUTS)
        values["num_ws"] = num_ws
    assert set(REQUIRED_KEYS) <= set(values)
    return {PREFIX + k: str(v) for k, v in values.items()}


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Set `metadata` (plus distgan.opset, read from the file) on the model at `path`, checked."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    # The opset the file really has: the dynamo exporter builds at 18 and converts down.
    metadata[PREFIX + "opset"] = str(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = (f"distgan {metadata[PREFIX + 'family']} generator: z ~ N(0, 1) [batch, "
                        f"{metadata[PREFIX + 'nz']}] -> images; see metadata_props distgan.*")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


# --- optimised copy, int8 ----------------------------------------------------------


def _save_optimized(path: Path, optimized: Path, metadata: dict[str, str]) -> None:
    """onnxruntime's basic graph optimisations, saved.

    Basic only rewrites with standard ONNX ops (constant folding, redundant nodes, Conv
    fusions), so the copy runs on any runtime, execution provider and CPU. Extended adds
    onnxruntime-only fused ops (com.microsoft) and "all" adds a layout for this CPU's
    vector width, which onnxruntime itself warns may not run elsewhere; sessions apply
    those at load time anyway, on the machine that runs them.
    """
    _session(path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, optimized)
    _write_metadata(optimized, metadata)  # onnxruntime does not carry metadata_props over


def _images_per_s(path: Path, feeds: dict[str, np.ndarray], repeats: int = 5) -> float:
    session = _session(path)
    session.run(["images"], feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(["images"], feeds)
        times.append(time.perf_counter() - start)
    return len(feeds["z"]) / statistics.median(times)


def _quantization_report(fp32: Path, int8: Path, reference: nn.Module, spec: dict[str, Any]) -> QuantizationReport:
    feeds = _inputs(spec, PARITY_BATCHES[-1], seed=PARITY_BATCHES[-1])
    got = _session(int8).run(["images"], feeds)[0].astype(np.float64)  # uint8 output: no wrap-around
    diff = np.abs(got - _torch_outputs(reference, feeds).astype(np.float64))
    timing = _inputs(spec, 64, seed=64)
    return QuantizationReport(float(diff.max()), float(diff.mean()),
                              _images_per_s(fp32, timing), _images_per_s(int8, timing))


# --- the whole export -------------------------------------------------------------


def default_output(source: Path, uint8_output: bool = False, quantize: str | None = None) -> Path:
    """`generator.onnx` (or `generator-int8.onnx`, `generator-uint8.onnx`) in the directory given."""
    suffix = "".join(f"-{s}" for s in (quantize, "uint8" if uint8_output else None) if s)
    return Path(source) / f"generator{suffix}.onnx"


def optimized_output(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".onnx") + ".opt.onnx")


def export_onnx(source: Path, out: Path | None = None, *, opset: int = DEFAULT_OPSET, uint8_output: bool = False,
                quantize: str | None = None) -> ExportResult:
    """Export the generator of a run directory (or its generator/ directory) to a checked ONNX model.

    Raises FileNotFoundError / ValueError for a bad source, ExportError when no exporter
    matches torch within FP32_TOLERANCE.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; valid: {', '.join(QUANTIZATIONS)}")
    source = Path(source)
    generator, info = load_generator(source)
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise ValueError(f"{source}: generator.json lacks {', '.join(missing)}")
    num_ws = int(getattr(generator, "num_ws", 0))  # style layers of a style-based generator (StyleGAN2)
    spec: dict[str, Any] = {**generator.spec.to_dict(), "num_ws": num_ws}
    if num_ws and (uint8_output or quantize):
        raise ValueError(f"{source}: a style-based generator exports as float32 only (no --uint8, no --quantize yet)")
    out = Path(out) if out is not None else default_output(source, uint8_output, quantize)
    out.parent.mkdir(parents=True, exist_ok=True)
    if num_ws:  # no inference rewrite: the graph is the module, called with its inputs by name
        generator = (ConditionalStyleInputs if spec["conditional"] else StyleInputs)(generator).eval()
        fast = generator
    else:
        fast = inference_generator(generator)
    notes: list[str] = []
    with TemporaryDirectory(dir=out.parent, prefix=".export-") as tmpdir:
        tmp = Path(tmpdir)
        exporter, parity = _export_checked(fast, generator, spec, tmp / "fp32.onnx", opset, FP32_TOLERANCE, notes)
        model, uint8_parity = tmp / "fp32.onnx", None
        if uint8_output:
            model = tmp / "uint8.onnx"
            exporter, uint8_parity = _export_checked(Uint8Output(fast), Uint8Output(generator), spec, model, opset,
                                                     UINT8_TOLERANCE, notes)
        report = None
        if quantize:
            quantize_int8(model, tmp / "int8.onnx", spec["nz"], spec["num_classes"] if spec["conditional"] else 0)
            fp32_model, model = model, tmp / "int8.onnx"
            report = _quantization_report(fp32_model, model, Uint8Output(generator) if uint8_output else generator,
                                          spec)
        metadata = build_metadata(info, uint8_output=uint8_output, quantization=quantize or "none",
                                  exporter=exporter, parity=max(parity.values()), num_ws=num_ws)
        _write_metadata(model, metadata)
        optimized = tmp / "optimized.onnx"
        _save_optimized(model, optimized, metadata)
        # The optimised copy is a second graph: checked against torch too, or against the int8
        # model it was made from (which differs from torch by design).
        reference = model if quantize else Uint8Output(generator) if uint8_output else generator
        diff = max(_max_diff(optimized, reference, spec).values())
        if diff > (UINT8_TOLERANCE if uint8_output else FP32_TOLERANCE):
            raise ExportError(f"onnxruntime's optimised copy differs from {'the int8 model' if quantize else 'torch'} "
                              f"by {diff:.3g}")
        os.replace(model, out)
        os.replace(optimized, optimized_output(out))
    return ExportResult(path=out, optimized_path=optimized_output(out), exporter=exporter, parity=parity,
                        metadata=metadata, uint8_parity=uint8_parity, quantization=report, notes=notes)
