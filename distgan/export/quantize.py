"""Static int8 quantisation (QDQ) of an exported generator, calibrated on its own inputs.

A generator's inputs are known exactly (standard-normal latents, uniform labels), so
calibration needs no data set: a few hundred random latents cover the activation ranges
the model will see. Weights are int8 per output channel, activations uint8 (the u8s8
kernels onnxruntime has on x86 and ARM).

Two ends of the network stay fp32 (`fp32_nodes`); everything between (the convolutions, ~98% of
DCGAN-28's multiply-adds, and the data movement between them) is int8:

- **The last layer and everything after it** (the conv / linear before tanh, the tanh, any
  interleave after it). A trained generator pushes its background far into tanh's flat
  region: on the house generator (DCGAN-28, 21k steps) the pre-tanh values span -364 to
  +7, so a uint8 tensor over that range has a step of 1.46, and the whole useful part of
  tanh (|x| < 2) got about three levels. That one tensor was 96% of the int8 error
  (mean |diff| 0.123 with it quantised, 0.0048 without) and took domain FID-5k from 21.4
  to 35.6 (fp32: 21.4); even a range clipped to tanh's useful part, +-4, would leave a step
  of 0.03 where tanh is steepest. The layer is ~1% of DCGAN-28's multiply-adds and ~3% of
  DCGAN-64's, but over half of the MLP generator's, whose int8 model is therefore no faster
  than fp32 (BENCHMARKS.md).
- **The first layer, with everything before it**: quantising z itself
  to 8 bits over its range of about +-4.5 costs every latent a step of 0.035; quantised, it
  doubles the mean error and, on the house generator, its max (0.22 -> 1.44); it is under
  1% of the multiply-adds.

The phase convolutions of a ConvTranspose (`phases.py`) are four Convs whose outputs meet
in Concats (one per row parity, transposed to NHWC and stacked by a last Concat): calibrated
one by one, each Conv would get its own uint8 scale and every Concat a wider one, rounding
every activation two or three times. `share_concat_scales` gives the four Convs, and every
Q/DQ pair on the way, the last Concat's scale (MinMax: its range is the union of theirs), so
each activation is rounded once, as it was when one Conv computed all four phases.

Calibration is MinMax over 256 latents. Measured on the house generator, with both ends
fp32: more latents, per-tensor weights, reduce_range and symmetric activations raised the
error, entropy calibration left it unchanged, and percentile calibration lowered the mean
by 8% but doubled the max (BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable
from tempfile import TemporaryDirectory

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

_LAYERS = ("Gemm", "MatMul", "Conv")
CALIBRATION_BATCHES = 8
CALIBRATION_BATCH_SIZE = 32


def draw_feeds(inputs: list[dict], batch: int, rng: np.random.Generator,
               class_ids: Callable[[int], np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds for G's declared inputs (`InputSpec.to_dict()`s, in order): N(0, 1) latents, images uniform in
    [-1, 1], and class ids from `class_ids(batch)`."""
    feeds = {}
    for spec in inputs:
        shape = (batch, *spec["shape"])
        if spec["draw"] == "class":
            feeds[spec["name"]] = class_ids(batch)
        elif spec["draw"] == "image":
            feeds[spec["name"]] = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        else:
            feeds[spec["name"]] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


class LatentReader(CalibrationDataReader):
    """Batches of generator inputs as G declares them (`InputSpec.to_dict()`s): N(0, 1) latents, every class
    in turn, images uniform in [-1, 1]."""

    def __init__(self, inputs: list[dict], num_classes: int, seed: int = 1234):
        rng = np.random.default_rng(seed)
        self._batches = []
        for b in range(CALIBRATION_BATCHES):
            ids = np.arange(b * CALIBRATION_BATCH_SIZE, (b + 1) * CALIBRATION_BATCH_SIZE)
            every_class = lambda n, ids=ids: (ids % num_classes).astype(np.int64)  # noqa: E731
            self._batches.append(draw_feeds(inputs, CALIBRATION_BATCH_SIZE, rng, every_class))
        self._next = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)


def quantize_int8(fp32_model: Path, out: Path, inputs: list[dict], num_classes: int) -> None:
    """Write the QDQ int8 version of `fp32_model` to `out` (metadata is the caller's job)."""
    with TemporaryDirectory() as tmp:
        # onnxruntime's recommended pre-processing (shape inference + basic graph optimisation);
        # the symbolic pass is for transformer-style dynamic shapes and adds nothing here.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), LatentReader(inputs, num_classes),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=fp32_nodes(onnx.load(str(prepared))),
        )
    model = onnx.load(str(out))
    if share_concat_scales(model):
        onnx.save(model, str(out))


# Ops whose output only rearranges their inputs' values: a quantisation scale passes through them unchanged.
_REARRANGING = ("Concat", "Transpose", "Unsqueeze")


def share_concat_scales(model: onnx.ModelProto) -> int:
    """Requantise every Q -> DQ pair upstream of a Concat, through rearranging ops (`_REARRANGING`) down to the
    ops that compute the values, with the scale and zero point of the Concat's own output Q, in place; returns how
    many pairs changed. Pairs with other consumers are left alone (and end the walk there)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    changed = 0

    def share(name: str, params: list[str]) -> None:
        nonlocal changed
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or len(consumers[name]) != 1 or len(consumers[dq.input[0]]) != 1:
            return
        if list(q.input[1:3]) != params:
            q.input[1:3] = params
            dq.input[1:3] = params
            changed += 1
        source = producer.get(q.input[0])
        if source is not None and source.op_type in _REARRANGING and len(consumers[q.input[0]]) == 1:
            for upstream in source.input[:1] if source.op_type != "Concat" else source.input:
                share(upstream, params)

    # The last Concat first: nodes are in topological order, and its scale is the one to spread.
    for concat in reversed([n for n in model.graph.node if n.op_type == "Concat"]):
        after = consumers.get(concat.output[0], [])
        if len(after) == 1 and after[0].op_type == "QuantizeLinear":
            for name in concat.input:
                share(name, list(after[0].input[1:3]))
    if changed:  # the pairs' own scales and zero points are now unused
        used = {name for node in model.graph.node for name in node.input}
        kept = [init for init in model.graph.initializer if init.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return changed


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes kept in fp32: up to the first layer and from the last layer on (see the module docstring)."""
    return up_to_first_layer(model) + from_last_layer(model)


def up_to_first_layer(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes up to and including the first Gemm / MatMul / Conv (nodes are in topological order)."""
    names = []
    for node in model.graph.node:
        names.append(node.name)
        if node.op_type in _LAYERS:
            return names
    return names


def from_last_layer(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from the last Gemm / MatMul / Conv on (nodes are in topological order)."""
    nodes = list(model.graph.node)
    last = max((i for i, node in enumerate(nodes) if node.op_type in _LAYERS), default=len(nodes))
    return [node.name for node in nodes[last:]]
