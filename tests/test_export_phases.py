"""The inference rewrite of stride-2 ConvTranspose layers (distgan/export/phases.py) and the graph onnxruntime
runs from it: exact in torch, exact after export, and free of the data movement the rewrite exists to remove."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from conftest import generator_dir
from distgan.artifacts import load_generator
from distgan.export import export_onnx
from distgan.export.phases import PaddedPhaseConvTranspose, PhaseConvTranspose
from distgan.export.rewrite import Reshape, inference_generator
from distgan.runtime import OnnxGenerator


@pytest.mark.parametrize("form", [PhaseConvTranspose, PaddedPhaseConvTranspose])
@pytest.mark.parametrize("activation", [None, nn.ReLU(), nn.Tanh()])
@pytest.mark.parametrize("size, bias", [((4, 4), True), ((3, 5), False)])
def test_phase_forms_equal_the_transposed_convolution(form, activation, size, bias):
    torch.manual_seed(1)
    layer = nn.ConvTranspose2d(8, 16, 4, 2, 1, bias=bias).double()
    x = torch.randn(3, 8, *size, dtype=torch.float64)
    want = layer(x) if activation is None else activation(layer(x))
    got = form(layer, activation, size).double()(x)
    assert got.shape == want.shape == (3, 16, 2 * size[0], 2 * size[1])
    assert torch.allclose(got, want, atol=1e-12), (got - want).abs().max()


@pytest.mark.parametrize("arch, shape, exact", [("dcgan64", (3, 64, 64), [True, True, False, False]),
                                                ("dcgan28", (1, 28, 28), [True, False])])
def test_exact_phases_where_the_channels_fill_nchwc_blocks(tmp_path, arch, shape, exact):
    """ngf 8: DCGAN-64's 64 -> 32 -> 16 -> 8 -> 3 and DCGAN-28's 32 -> 16 -> 8: four exact Convs for 32 and 16
    channels, one padded Conv below 16 and for the image layer; the first ReLU sits before the Reshape."""
    generator, _ = load_generator(generator_dir(tmp_path, arch, shape, ngf=8))
    layers = list(inference_generator(generator).net)
    forms = [layer for layer in layers if isinstance(layer, (PhaseConvTranspose, PaddedPhaseConvTranspose))]
    assert [isinstance(f, PhaseConvTranspose) for f in forms] == exact
    assert not any(isinstance(layer, nn.Unflatten) for layer in layers)
    assert [type(layer) for layer in layers[:3]] == [nn.Linear, nn.ReLU, Reshape]


def _optimized(path: Path, tmp_path: Path, level: ort.GraphOptimizationLevel) -> onnx.GraphProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / f"{int(level)}.onnx")
    options.log_severity_level = 3  # the NCHWc model's "hardware specific" warning
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath).graph


@pytest.mark.parametrize("arch, shape, exact_layers, padded_layers",
                         [("dcgan64", (3, 64, 64), 2, 2), ("dcgan28", (1, 28, 28), 1, 1)])
def test_the_graph_onnxruntime_runs_has_no_leftover_data_movement(tmp_path, arch, shape, exact_layers, padded_layers):
    """Per upsampling layer: Convs, and an interleave of three Concats (exact form) or one Transpose and a crop of two
    Slices (padded form); no DepthToSpace, no Pad (folded into the Convs), no Shape arithmetic."""
    result = export_onnx(generator_dir(tmp_path, arch, shape, ngf=8), tmp_path / "g.onnx")
    assert result.max_abs_diff <= 1e-4
    model = OnnxGenerator(result.path)
    z = model.latents(37, seed=5)
    generator, _ = load_generator(tmp_path / arch)
    with torch.inference_mode():
        reference = generator(torch.from_numpy(z)).numpy()
    assert np.abs(model.run(z) - reference).max() <= 1e-4
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        graph = _optimized(result.path, tmp_path, level)
        ops = [node.op_type for node in graph.node]
        assert not {"DepthToSpace", "Pad", "Shape", "ConvTranspose"} & set(ops), ops
        assert ops.count("Conv") == 4 * exact_layers + padded_layers + (arch == "dcgan28")  # + its last 3x3 conv
        assert ops.count("Concat") == 3 * exact_layers and ops.count("Slice") == 2 * padded_layers, ops
    # With onnxruntime's blocked layout (x86): each row parity's two Convs feed their Concat directly (no reorders
    # between), the row parities reach the stacking Concat through one ReorderOutput each, and only the padded
    # layers keep an interleave Transpose (ReorderOutput -> Reshape -> Transpose).
    producer = {out: node for node in graph.node for out in node.output}

    def sources(node: onnx.NodeProto) -> list[str]:
        return [producer[name].op_type for name in node.input if name in producer]

    concats = [node for node in graph.node if node.op_type == "Concat"]
    rows = [node for node in concats if sources(node) == ["Conv", "Conv"]]
    stacks = [node for node in concats if node not in rows]
    assert len(rows) == 2 * exact_layers and len(stacks) == exact_layers
    for stack in stacks:
        assert [sources(producer[name]) for name in stack.input] == [["ReorderOutput"], ["ReorderOutput"]]
    interleaves = [node for node in graph.node if node.op_type == "Transpose" and sources(node) == ["Reshape"]
                   and sources(producer[node.input[0]]) == ["ReorderOutput"]]
    assert len(interleaves) == padded_layers


def test_int8_phase_outputs_are_rounded_once(tmp_path):
    """The four phase Convs of a layer, and every Q/DQ pair between them and the stacking Concat, share that Concat's
    uint8 scale (quantize.share_concat_scales)."""
    source = generator_dir(tmp_path, "dcgan64", (3, 64, 64), ngf=8)
    result = export_onnx(source, quantize="int8")
    graph = onnx.load(str(result.path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    concats = [node for node in graph.node if node.op_type == "Concat"]
    assert len(concats) == 6
    stacks = [node for node in concats if producer[producer[producer[node.input[0]].input[0]].input[0]].op_type != "Conv"]
    assert len(stacks) == 2
    for stack in stacks:
        (after,) = consumers[stack.output[0]]
        assert after.op_type == "QuantizeLinear"
        params = list(after.input[1:3])
        pending, convs = list(stack.input), 0
        while pending:  # walk back through DQ <- Q <- rearranging op to the phase Convs (their ReLU fused in)
            dq = producer[pending.pop()]
            assert dq.op_type == "DequantizeLinear" and list(dq.input[1:3]) == params, dq.name
            q = producer[dq.input[0]]
            assert q.op_type == "QuantizeLinear" and list(q.input[1:3]) == params, q.name
            origin = producer[q.input[0]]
            if origin.op_type == "Conv":
                convs += 1
            else:
                assert origin.op_type in ("Concat", "Transpose", "Unsqueeze"), origin.op_type
                pending += origin.input if origin.op_type == "Concat" else origin.input[:1]
        assert convs == 4
    model = OnnxGenerator(result.path)
    z = model.latents(8, seed=3)
    generator, _ = load_generator(source)
    with torch.inference_mode():
        reference = generator(torch.from_numpy(z)).numpy()
    error = np.abs(model.run(z) - reference)
    spread = reference.max() - reference.min()
    assert error.max() < 0.03 * spread and error.mean() < 0.001 * spread, (error.max(), error.mean(), spread)
