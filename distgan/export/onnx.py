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
from distgan.export.quantize import draw_feeds, quantize_int8
from distgan.models import family_of
from distgan.runtime import PREFIX, REQUIRED_KEYS

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
    """The generator with the conversion to uint8 [B, H, W, C] inside the graph (what an image file wants); a
    generator with extra image outputs (a pyramid's stages) has each converted alike."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator
        self.train(generator.training)  # the TorchScript exporter restores the wrapper's mode onto G afterwards

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.generator(*inputs)
        if isinstance(out, tuple):
            return tuple(self._uint8(images) for images in out)
        return self._uint8(out)

    @staticmethod
    def _uint8(images: torch.Tensor) -> torch.Tensor:
        return torch.round(torch.clamp((images + 1.0) * 127.5, 0.0, 255.0)).to(torch.uint8).permute(0, 2, 3, 1)


# --- inputs -------------------------------------------------------------------------


def _torch_outputs(module: nn.Module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of `module` (one, or a tuple: images first)."""
    with torch.inference_mode():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


@dataclass(frozen=True)
class _Inputs:
    """What G takes, as the exporter and its checks need it, and the graph's outputs (`images` first)."""

    specs: list[dict[str, Any]]  # InputSpec.to_dict() each, in G's argument order
    num_classes: int
    outputs: tuple[str, ...] = ("images",)

    def feeds(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return draw_feeds(self.specs, batch, rng, lambda n: rng.integers(0, self.num_classes, n, dtype=np.int64))


def _session(path: Path, level: ort.GraphOptimizationLevel | None = None,
             optimized_path: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _parity(path: Path, original: nn.Module | Path, traced: nn.Module, spec: _Inputs) -> dict[int, float]:
    """`_max_diff` against the original generator (its images) and, for a graph with stage outputs, which the
    original does not return, against the traced module too (every output)."""
    diffs = _max_diff(path, original, spec)
    if len(spec.outputs) > 1 and not isinstance(original, Path):
        diffs = {b: max(d, e) for (b, d), e in zip(diffs.items(), _max_diff(path, traced, spec).values())}
    return diffs


def _max_diff(path: Path, reference: nn.Module | Path, spec: _Inputs) -> dict[int, float]:
    """Max |onnxruntime - reference| per parity batch size, on the same inputs, over every output the
    reference has (`images` first); the reference is a torch module or another ONNX file."""
    session = _session(path)
    other = _session(reference) if isinstance(reference, Path) else None
    diffs = {}
    for batch in PARITY_BATCHES:
        feeds = spec.feeds(batch, seed=batch)
        got = session.run(list(spec.outputs), feeds)
        want = other.run(list(spec.outputs), feeds) if other is not None else _torch_outputs(reference, feeds)
        diffs[batch] = max(float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max())
                           for g, w in zip(got, want))
    return diffs


# --- exporters ----------------------------------------------------------------------


def _axes(inputs: _Inputs) -> dict[str, dict[int, str]]:
    """Each input's dynamic axes by name: the batch, and what the family marks dynamic."""
    return {i["name"]: {0: "batch", **{a + 1: d for a, d in enumerate(i["dynamic"]) if d}} for i in inputs.specs}


def _export_dynamo(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int,
                   inputs: _Inputs) -> None:
    dims: dict[str, torch.export.Dim] = {}
    shapes = {name: {a: dims.setdefault(d, torch.export.Dim(d, min=1)) for a, d in axes.items()}
              for name, axes in _axes(inputs).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "axis name batch will not be used": z and labels share it
        torch.onnx.export(module, args, str(path), input_names=list(shapes), output_names=list(inputs.outputs),
                          opset_version=opset, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=shapes)


def _export_torchscript(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int,
                        inputs: _Inputs) -> None:
    axes = _axes(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose, see above
        torch.onnx.export(module, args, str(path), input_names=list(axes), output_names=list(inputs.outputs),
                          opset_version=opset, dynamo=False,
                          dynamic_axes={**axes, **{name: {0: "batch"} for name in inputs.outputs}})


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


def _export_checked(module: nn.Module, reference: nn.Module, spec: _Inputs, path: Path, opset: int,
                    tolerance: float, notes: list[str]) -> tuple[str, dict[int, float]]:
    """Export with the first exporter whose model matches `reference` within `tolerance`; outputs beyond
    `images` (which `reference`, the original generator, does not make) are checked against `module`."""
    example = tuple(torch.from_numpy(v) for v in spec.feeds(2, seed=0).values())  # batch 2: 1 would specialise
    if len(_exporters()) == 1 and not notes:
        notes.append("dynamo exporter not available (needs onnxscript); used the TorchScript exporter")
    failures = []
    for name, export in _exporters():
        try:
            export(module, example, path, opset, spec)
            drop_empty_optional_inputs(path)
            diffs = _parity(path, reference, module, spec)
        except Exception as exc:  # an exporter bug must not hide the other exporter
            failures.append(f"{name} exporter failed: {type(exc).__name__}: {exc}")
            continue
        if max(diffs.values()) <= tolerance:
            notes.extend(failures)
            return name, diffs
        failures.append(f"{name} exporter: max |onnxruntime - torch| = {max(diffs.values()):.3g} > {tolerance:g}")
    raise ExportError("no exporter gave a model that matches torch: " + "; ".join(failures))


# --- metadata -------------------------------------------------------------------------


def build_metadata(info: dict[str, Any], inputs: _Inputs, family_extras: dict[str, str], *, uint8_output: bool,
                   quantization: str, exporter: str, parity: float) -> dict[str, str]:
    """Everything a client needs, as `distgan.*` string pairs (keys: distgan.runtime.REQUIRED_KEYS + extras):
    G's named inputs (`input_specs`: name, dtype, shape, how to draw, dynamic axes) and the family's extras."""
    spec = info["spec"]
    nz = next((i["shape"][0] for i in inputs.specs if i["name"] == "z"), 0)
    classes = list(info["classes"]) if spec["conditional"] else []
    if len(classes) != (spec["num_classes"] if spec["conditional"] else 0):
        classes = [str(i) for i in range(spec["num_classes"])]  # a data set without names
    values = {
        "family": spec["arch"], "nz": nz, "channels": spec["channels"], "height": spec["height"],
        "width": spec["width"], "num_classes": len(classes), "class_names": json.dumps(classes),
        "output_range": "0,255" if uint8_output else "-1,1", "output_layout": "NHWC" if uint8_output else "NCHW",
        "output_dtype": "uint8" if uint8_output else "float32", "step": info["step"],
        "dataset": info["dataset"], "distgan_version": info["distgan_version"],
        "config_hash": info["config_hash"], "quantization": quantization,
        # Extras: how to draw z, how the model was made, the full architecture.
        "latent": "standard_normal", "inputs": ",".join(i["name"] for i in inputs.specs),
        "input_specs": json.dumps(inputs.specs), **family_extras,
        "exporter": exporter, "fp32_parity_max_abs": f"{parity:.3g}",
        "export_version": distgan.__version__, "spec": json.dumps(spec, sort_keys=True),
    }
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


def _quantization_report(fp32: Path, int8: Path, reference: nn.Module, spec: _Inputs) -> QuantizationReport:
    feeds = spec.feeds(PARITY_BATCHES[-1], seed=PARITY_BATCHES[-1])
    got = _session(int8).run(["images"], feeds)[0].astype(np.float64)  # uint8 output: no wrap-around
    diff = np.abs(got - _torch_outputs(reference, feeds)[0].astype(np.float64))
    timing = spec.feeds(64, seed=64)
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
    family = family_of(generator)
    spec = _Inputs([i.to_dict() for i in family.inputs(generator.spec)],
                   generator.spec.num_classes if generator.spec.conditional else 0,
                   ("images", *family.stage_outputs(generator.spec)))
    out = Path(out) if out is not None else default_output(source, uint8_output, quantize)
    out.parent.mkdir(parents=True, exist_ok=True)
    fast = family.export_module(generator)
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
            quantize_int8(model, tmp / "int8.onnx", spec.specs, spec.num_classes)
            fp32_model, model = model, tmp / "int8.onnx"
            report = _quantization_report(fp32_model, model, Uint8Output(generator) if uint8_output else generator,
                                          spec)
        metadata = build_metadata(info, spec, family.export_metadata(generator.spec), uint8_output=uint8_output, quantization=quantize or "none",
                                  exporter=exporter, parity=max(parity.values()))
        _write_metadata(model, metadata)
        optimized = tmp / "optimized.onnx"
        _save_optimized(model, optimized, metadata)
        # The optimised copy is a second graph: checked against torch too, or against the int8
        # model it was made from (which differs from torch by design).
        reference = model if quantize else Uint8Output(generator) if uint8_output else generator
        diff = max(_parity(optimized, reference, Uint8Output(fast) if uint8_output else fast, spec).values())
        if diff > (UINT8_TOLERANCE if uint8_output else FP32_TOLERANCE):
            raise ExportError(f"onnxruntime's optimised copy differs from {'the int8 model' if quantize else 'torch'} "
                              f"by {diff:.3g}")
        os.replace(model, out)
        os.replace(optimized, optimized_output(out))
    return ExportResult(path=out, optimized_path=optimized_output(out), exporter=exporter, parity=parity,
                        metadata=metadata, uint8_parity=uint8_parity, quantization=report, notes=notes)
