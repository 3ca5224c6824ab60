"""Generators and discriminators saved and exported by distgan before the model-family refactor (issue 24)
load with today's code and give the same images and scores, bit for bit (tests/fixtures/legacy/)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan.artifacts import load_discriminator, load_generator
from distgan.runtime import OnnxGenerator, latents, to_uint8_nhwc

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
RECORD = json.loads((LEGACY / "digests.json").read_text())
SEEDS = np.array(RECORD["seeds"])
NAMES = sorted(RECORD["digests"])


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def seeded_inputs(classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    return latents(SEEDS, RECORD["nz"]), (SEEDS % classes).astype(np.int64) if classes else None


@pytest.mark.parametrize("name", NAMES)
def test_old_generator_directory_gives_the_recorded_images(name):
    generator, info = load_generator(LEGACY / name)
    z, labels = seeded_inputs(len(info["classes"]))
    with torch.inference_mode():
        images = generator(torch.from_numpy(z), None if labels is None else torch.from_numpy(labels)).numpy()
    want = RECORD["digests"][name]
    assert list(images.shape) == want["shape"]
    assert sha256(to_uint8_nhwc(images)) == want["torch_uint8"]
    assert sha256(images) == want["torch_float32"]


@pytest.mark.parametrize("name", NAMES)
def test_old_onnx_export_gives_the_recorded_images(name):
    model = OnnxGenerator(LEGACY / f"{name}.onnx", threads=1)
    z, labels = seeded_inputs(model.info.num_classes)
    images = model.run(z, labels)
    want = RECORD["digests"][name]
    assert sha256(to_uint8_nhwc(images)) == want["onnx_uint8"]
    assert sha256(images) == want["onnx_float32"]


@pytest.mark.parametrize("name", NAMES)
def test_old_checkpoint_discriminator_gives_the_recorded_scores(name):
    d = load_discriminator(LEGACY / name / "checkpoint")
    shape = RECORD["digests"][name]["shape"][1:]
    images = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    classes = d.spec.num_classes if d.spec.conditional else 0
    labels = torch.from_numpy(SEEDS % classes) if classes else None
    with torch.no_grad():
        assert sha256(d(images, labels).numpy()) == RECORD["digests"][name]["scores_float32"]
