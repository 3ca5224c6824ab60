"""Static int8 quantisation (QDQ) of an exported generator, calibrated on its own inputs.

A generator's inputs are known exactly (standard-normal latents, uniform labels), so
calibration needs no data set: a few hundred random latents cover the activation ranges
the model will see. Weights are int8 per output channel, activations uint8 (the u8s8
kernels onnxruntime has on x86 and ARM).
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

CALIBRATION_BATCHES = 8
CALIBRATION_BATCH_SIZE = 32


class LatentReader(CalibrationDataReader):
    """Batches of generator inputs: N(0, 1) latents and, for conditional models, every class in turn."""

    def __init__(self, nz: int, num_classes: int, seed: int = 1234):
        rng = np.random.default_rng(seed)
        self._batches = []
        for b in range(CALIBRATION_BATCHES):
            feeds = {"z": rng.standard_normal((CALIBRATION_BATCH_SIZE, nz), dtype=np.float32)}
            if num_classes:
                ids = np.arange(b * CALIBRATION_BATCH_SIZE, (b + 1) * CALIBRATION_BATCH_SIZE)
                feeds["labels"] = (ids % num_classes).astype(np.int64)
            self._batches.append(feeds)
        self._next = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)


def quantize_int8(fp32_model: Path, out: Path, nz: int, num_classes: int) -> None:
    """Write the QDQ int8 version of `fp32_model` to `out` (metadata is the caller's job)."""
    with TemporaryDirectory() as tmp:
        # onnxruntime's recommended pre-processing (shape inference + basic graph optimisation);
        # the symbolic pass is for transformer-style dynamic shapes and adds nothing here.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), LatentReader(nz, num_classes),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
