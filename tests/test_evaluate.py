"""Evaluation for real: distgan-eval on runs and ONNX files, torch vs ONNX, torch-fidelity cross-check,
the fool rate, the IS weights, and evaluation during training (FID lines, generator_best/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import REPO, make_idx_dataset, run_env
from distgan import trainer
from distgan.checkpoint import load_generator, save_generator
from distgan.config import ConfigError, load_config
from distgan.data import ShardLoader
from distgan.data.shards import write_shards
from distgan.data.sources import read_idx_dataset
from distgan.metrics import inception_logits, save_domain_classifier, train_domain_classifier
from distgan.metrics.domain import default_domain_dir
from distgan.metrics.evaluate import evaluate, make_extractors
from distgan.metrics.fool import FoolRate
from distgan.metrics.generated import OnnxSource, TorchSource, latents
from distgan.metrics.inception import InceptionWeightsError
from distgan.models import ModelConfig, build_generator

TINY = ["model.ngf=8", "model.ndf=8", "data.batch_size=16", "data.num_workers=0", "data.shuffle_buffer=64",
        "log.sample_grid=16", "train.log_every=2", "train.sample_every=4", "train.checkpoint_every=4"]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny Fashion-MNIST-shaped shards, and a cache holding their domain classifier (1 epoch)."""
    root = tmp_path_factory.mktemp("world")
    make_idx_dataset(root / "raw", n_train=600, n_test=300)
    write_shards(read_idx_dataset("fashion-mnist", root / "raw"), root / "shards", samples_per_shard=200,
                 chunk_size=64)
    cache = root / "cache"
    model = train_domain_classifier(root / "shards", epochs=1, batch_size=64, test_split=None)
    save_domain_classifier(model, cache / "domain" / "fashion-mnist")
    return root / "shards", cache


@pytest.fixture
def cache_env(world, monkeypatch):
    monkeypatch.setenv("DISTGAN_CACHE", str(world[1]))
    return world[1]


def generator_dir(tmp_path: Path, conditional: bool) -> Path:
    """An untrained DCGAN-28 saved like a run's generator/ (what export and eval read)."""
    torch.manual_seed(0)
    G = build_generator(ModelConfig(ngf=8, nz=16, conditional=conditional), 1, 28, 28, 10 if conditional else 0)
    out = tmp_path / "generator"
    save_generator(G, out, {"step": 7, "dataset": "fashion-mnist", "classes": [str(i) for i in range(10)],
                            "image_shape": [1, 28, 28], "config_hash": "abc"})
    return out


def export_per_contract(directory: Path, out: Path) -> Path:
    """An fp32 ONNX export with the distgan metadata (the contract distgan.export writes)."""
    G, info = load_generator(directory)
    spec = G.spec
    conditional = spec["conditional"]
    z = torch.randn(2, spec["nz"])
    args = (z, torch.zeros(2, dtype=torch.int64)) if conditional else (z,)
    names = ["z", "labels"] if conditional else ["z"]
    torch.onnx.export(G, args, str(out), input_names=names, output_names=["images"], opset_version=17,
                      dynamic_axes={n: {0: "batch"} for n in names + ["images"]}, dynamo=False)
    model = onnx.load(str(out))
    meta = {"family": spec["arch"], "nz": spec["nz"], "channels": spec["channels"], "height": spec["height"],
            "width": spec["width"], "num_classes": spec["num_classes"] if conditional else 0,
            "class_names": json.dumps(info["classes"]), "output_range": "-1,1", "output_layout": "NCHW",
            "output_dtype": "float32", "step": info["step"], "dataset": info["dataset"],
            "config_hash": info["config_hash"], "quantization": "none"}
    for key, value in meta.items():
        model.metadata_props.add(key=f"distgan.{key}", value=str(value))
    onnx.save(model, str(out))
    return out


# --- sources ------------------------------------------------------------------------------

def test_latents_are_seeded_and_classes_balanced():
    z, labels = latents(25, 4, 10, seed=3)
    z2, labels2 = latents(25, 4, 10, seed=3)
    assert torch.equal(z, z2) and torch.equal(labels, labels2)
    assert sorted(torch.bincount(labels, minlength=10).tolist()) == [2] * 5 + [3] * 5
    assert latents(25, 4, 0, seed=3)[1] is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy TorchScript ONNX exporter
def test_torch_and_onnx_evaluation_agree(world, cache_env, tmp_path):
    data, _ = world
    directory = generator_dir(tmp_path, conditional=True)
    onnx_path = export_per_contract(directory, tmp_path / "g.onnx")
    torch_source, onnx_source = TorchSource.from_dir(directory), OnnxSource(onnx_path)
    assert onnx_source.info.num_classes == 10 and onnx_source.info.step == 7
    a = next(torch_source.batches(8, seed=1))
    b = next(onnx_source.batches(8, seed=1))
    assert torch.equal(a.labels, b.labels)
    assert (a.images.int() - b.images.int()).abs().max() <= 1  # float rounding at a quantisation edge
    kw = dict(split="test", n=300, metrics=["fid", "kid", "pr"], features="domain", progress=False,
              cache_dir=tmp_path / "ref")
    ours, theirs = evaluate(torch_source, data, **kw), evaluate(onnx_source, data, **kw)
    assert ours["metrics"]["fid"] > 1.0
    assert ours["metrics"]["fid"] == pytest.approx(theirs["metrics"]["fid"], rel=1e-3)
    assert ours["metrics"]["kid"] == pytest.approx(theirs["metrics"]["kid"], rel=1e-2, abs=1e-4)
    assert theirs["source"]["kind"] == "onnx" and theirs["source"]["quantization"] == "none"
    assert ours["n"] == 300 and ours["n_real"] == 300 and ours["dataset"] == "fashion-mnist"


def test_onnx_without_the_contract_metadata_is_refused(tmp_path):
    model = torch.nn.Linear(4, 4)
    torch.onnx.export(model, (torch.randn(1, 4),), str(tmp_path / "x.onnx"), input_names=["z"], dynamo=False)
    with pytest.raises(ValueError, match=r"metadata_props lack \['distgan.nz'"):
        OnnxSource(tmp_path / "x.onnx")


class Images(torch.utils.data.Dataset):
    """uint8 CHW images, the dataset form torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def test_figures_match_torch_fidelity_on_the_same_images(world, cache_env, tmp_path):
    """Our pipeline (generation, quantisation, features, cached reference) against torch-fidelity's own
    calculate_metrics, with the domain classifier registered as a torch-fidelity feature extractor."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    data, _ = world
    source = TorchSource.from_dir(generator_dir(tmp_path, conditional=False))
    ours = evaluate(source, data, n=300, metrics=["fid", "kid"], features="domain", progress=False,
                    cache_dir=tmp_path / "ref")
    extractor, _ = make_extractors("domain", "fashion-mnist")

    class Domain(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)

        def forward(self, x):  # torch-fidelity hands over uint8 NCHW batches
            return (extractor(x.permute(0, 2, 3, 1).contiguous()),)

        @staticmethod
        def get_provided_features_list():
            return ("domain",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "domain"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

    name = f"distgan-domain-{tmp_path.name}"
    torch_fidelity.register_feature_extractor(name, Domain)
    fake = torch.cat([b.images for b in source.batches(300)]).permute(0, 3, 1, 2)
    real = torch.cat([b.images for b in ShardLoader(str(data), "test", 100, num_workers=0, shuffle_buffer=0,
                                                     drop_last=False).epoch(0)]).permute(0, 3, 1, 2)
    theirs = torch_fidelity.calculate_metrics(
        input1=Images(fake), input2=Images(real), fid=True, kid=True, kid_subset_size=300, kid_subsets=100,
        feature_extractor=name, cuda=False, verbose=False, cache=False, batch_size=100, rng_seed=2020)
    assert ours["metrics"]["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["metrics"]["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
