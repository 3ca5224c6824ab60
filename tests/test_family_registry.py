"""A model family is one module plus one registry entry: a toy family, defined here and registered only through
DISTGAN_FAMILIES, trains, checkpoints (its loss-term state too), resumes, exports and samples with no other
change to distgan."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from conftest import REPO, TINY
from distgan import training as trainer
from distgan.config import ConfigError, load_config
from distgan.export.onnx import export_onnx
from distgan.models import Family, InputSpec, LossTerms, ModelConfig, ModelSpec, get_family
from distgan.models.family import PLUGIN_ENV, check_common
from distgan.runtime import OnnxGenerator
from distgan.sample import main as sample_main

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@dataclasses.dataclass
class ToyConfig(ModelConfig):
    toy_gain: float = 1.0  # the family's own key: the constant G's named `gain` input gets in training


@dataclasses.dataclass(frozen=True)
class ToySpec(ModelSpec):
    KIND = "toy"
    arch: str
    nz: int
    channels: int
    height: int
    width: int
    num_classes: int
    conditional: bool


class ToyGenerator(nn.Module):
    """z [B, nz] and a named input `gain` [B, 1] -> images: tanh(Linear(z)) * gain."""

    def __init__(self, spec: ToySpec):
        super().__init__()
        self.spec = spec
        self.linear = nn.Linear(spec.nz, spec.channels * spec.height * spec.width)

    def forward(self, z: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        images = torch.tanh(self.linear(z)).unflatten(1, (self.spec.channels, self.spec.height, self.spec.width))
        return images * gain.reshape(-1, 1, 1, 1)


class ToyDiscriminator(nn.Module):
    def __init__(self, spec: ToySpec):
        super().__init__()
        self.spec = spec
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(spec.channels * spec.height * spec.width, 8),
                                 nn.LeakyReLU(0.2), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).flatten().float()


class ToyTerms(LossTerms):
    """A G-side penalty on the fakes' mean brightness, with state: G updates seen and the running mean."""

    def __init__(self):
        super().__init__()
        self.register_buffer("g_updates", torch.zeros(()))
        self.register_buffer("mean_brightness", torch.zeros(()))

    def g_loss(self, step, inputs, fake):
        self.g_updates.add_(1)
        self.mean_brightness.lerp_(fake.detach().float().mean(), 0.5)
        return 0.01 * fake.float().mean() ** 2


class ToyFamily(Family):
    name = "toy"
    config = ToyConfig
    generator_spec = discriminator_spec = ToySpec
    defaults = {"loss.kind": "hinge", "optim.g_betas": [0.0, 0.99]}

    def check(self, cfg, shape, num_classes):
        check_common(cfg, shape, num_classes)
        if cfg.toy_gain <= 0:
            raise ValueError(f"model.toy_gain must be > 0, got {cfg.toy_gain}")

    def make_generator_spec(self, cfg, shape, num_classes):
        self.check(cfg, shape, num_classes)
        return ToySpec(cfg.arch, cfg.nz, *shape, num_classes, cfg.conditional)

    make_discriminator_spec = make_generator_spec

    def build_generator(self, spec):
        return ToyGenerator(spec)

    def build_discriminator(self, spec):
        return ToyDiscriminator(spec)

    def inputs(self, spec):
        return (InputSpec("z", "float32", (spec.nz,), "normal"), InputSpec("gain", "float32", (1,), "normal",
                                                                             default=1.0))

    def generator_inputs(self, spec, z, labels, real=None):
        return {"z": z, "gain": torch.ones(len(z), 1, device=z.device)}

    def loss_terms(self, cfg, g_spec, d_spec):
        return ToyTerms()

    def export_metadata(self, spec):
        return {"toy": "yes"}


TOY = ToyFamily()


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setenv(PLUGIN_ENV, f"{__name__}:TOY")


def toy_config(data: Path, run_dir: Path, *extra: str):
    return load_config(None, [f"data.path={data}", f"run_dir={run_dir}", "name=toy", "model.arch=toy", "model.nz=8",
                              *TINY, "train.checkpoint_every=3", *extra])


def test_a_family_outside_distgan_is_unknown_until_registered(monkeypatch, shards, tmp_path):
    with pytest.raises(ConfigError, match="config key 'model.arch': unknown model.arch 'toy'; valid: mlp, dcgan"):
        toy_config(shards[0], tmp_path)
    monkeypatch.setenv(PLUGIN_ENV, f"{__name__}:TOY")
    assert get_family("toy") is TOY
    with pytest.raises(ConfigError, match="unknown config key 'model.toy_gian'; did you mean 'model.toy_gain'"):
        toy_config(shards[0], tmp_path, "model.toy_gian=2")
    with pytest.raises(ConfigError, match="model.toy_gain"):
        load_config(None, [f"data.path={shards[0]}", "model.toy_gain=2"])  # a toy key on a dcgan run


def test_a_registered_toy_family_trains_resumes_exports_and_samples(toy_registered, shards, tmp_path):
    data, _ = shards
    cfg = toy_config(data, tmp_path, "train.steps=3", "model.toy_gain=0.5")
    assert cfg.loss.kind == "hinge" and list(cfg.optim.g_betas) == [0.0, 0.99]  # the family's defaults
    assert trainer.train(cfg) == "completed"
    run = tmp_path / "toy"
    record = (run / "config.yaml").read_text()
    assert "kind: hinge" in record and "toy_gain: 0.5" in record
    terms = load_file(str(run / "checkpoints" / "step-0000003" / "family.safetensors"))
    assert terms["g_updates"].item() == 3 and terms["mean_brightness"].item() != 0

    assert trainer.train(toy_config(data, tmp_path, "train.steps=5", "model.toy_gain=0.5")) == "completed"
    terms = load_file(str(run / "checkpoints" / "step-0000005" / "family.safetensors"))
    assert terms["g_updates"].item() == 5  # resumed from 3, not restarted

    result = export_onnx(run)
    assert result.metadata["distgan.toy"] == "yes" and result.metadata["distgan.inputs"] == "z,gain"
    assert json.loads(result.metadata["distgan.input_specs"])[1]["default"] == 1.0
    model = OnnxGenerator(result.path, threads=1)
    drawing = model.sample(seed=3, n=4)
    assert drawing.images.shape == (4, 28, 28, 1) and np.asarray(drawing.images).std() > 0
    out = tmp_path / "grid.png"
    assert sample_main(["--onnx", str(result.path), "--n", "4", "--grid", str(out), "--threads", "1"]) == 0
    assert out.stat().st_size > 100
