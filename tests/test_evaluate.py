"""Evaluation for real: distgan-eval on runs and ONNX files, torch vs ONNX, torch-fidelity cross-check,
the fool rate, the IS weights, and evaluation during training (FID lines, generator_best/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, make_idx_dataset, run_env
from distgan import training as trainer
from distgan.artifacts import load_generator, save_generator
from distgan.config import ConfigError, load_config
from distgan.data import ShardLoader
from distgan.data.shards import write_shards
from distgan.data.sources import read_idx_dataset
from distgan.export import export_onnx
from distgan.metrics import (domain_features, inception_logits, inception_score, save_domain_classifier,
                             train_domain_classifier)
from distgan.metrics.evaluate import evaluate, make_extractors
from distgan.metrics.fool import FoolRate
from distgan.metrics.generated import OnnxSource, TorchSource, latents
from distgan.metrics.inception import InceptionWeightsError
from distgan.models import ModelConfig, build_generator

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


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
                            "image_shape": [1, 28, 28], "config_hash": "abc", "distgan_version": "test"})
    return out


# --- sources ------------------------------------------------------------------------------

def test_latents_are_seeded_and_classes_balanced():
    z, labels = latents(25, 4, 10, seed=3)
    z2, labels2 = latents(25, 4, 10, seed=3)
    assert torch.equal(z, z2) and torch.equal(labels, labels2)
    assert sorted(torch.bincount(labels, minlength=10).tolist()) == [2] * 5 + [3] * 5
    assert latents(25, 4, 0, seed=3)[1] is None


def test_torch_and_onnx_evaluation_agree(world, cache_env, tmp_path, capsys):
    data, _ = world
    directory = generator_dir(tmp_path, conditional=True)
    fp32 = export_onnx(directory, tmp_path / "g.onnx").path
    int8 = export_onnx(directory, tmp_path / "g-int8.onnx", quantize="int8").path
    torch_source, onnx_source = TorchSource.from_dir(directory), OnnxSource(fp32)
    assert onnx_source.info.num_classes == 10 and onnx_source.info.step == 7
    a = next(torch_source.batches(8, seed=1))
    b = next(onnx_source.batches(8, seed=1))
    assert torch.equal(a.labels, b.labels)
    assert (a.images.int() - b.images.int()).abs().max() <= 1  # float rounding at a quantisation edge
    kw = dict(split="test", n=300, metrics=["fid", "kid"], features="domain", progress=False,
              cache_dir=tmp_path / "ref")
    ours, theirs = evaluate(torch_source, data, **kw), evaluate(onnx_source, data, **kw)
    assert ours["metrics"]["fid"] > 1.0
    assert ours["metrics"]["fid"] == pytest.approx(theirs["metrics"]["fid"], rel=1e-3)
    assert ours["metrics"]["kid"] == pytest.approx(theirs["metrics"]["kid"], rel=1e-2, abs=1e-4)
    assert theirs["source"]["kind"] == "onnx" and theirs["source"]["quantization"] == "none"
    assert ours["n"] == 300 and ours["n_real"] == 300 and ours["dataset"] == "fashion-mnist"
    quantized = evaluate(OnnxSource(int8), data, **kw)
    assert quantized["source"]["quantization"] == "int8" and np.isfinite(quantized["metrics"]["fid"])
    with capsys.disabled():
        print(f"\n[torch vs ONNX] FID torch {ours['metrics']['fid']:.4f}, fp32 {theirs['metrics']['fid']:.4f}, "
              f"int8 {quantized['metrics']['fid']:.4f} (untrained generator, domain features, n=300)")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
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
        feature_extractor=name, cuda=False, verbose=False, cache=False, batch_size=100, rng_seed=2020,
        save_cpu_ram=True)
    assert ours["metrics"]["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["metrics"]["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)


# --- the fool rate ------------------------------------------------------------------------------

class Brightness(torch.nn.Module):
    """A stand-in D whose score is the mean pixel: bright images are 'real'."""

    projection = None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


def test_fool_rate_uses_the_loss_threshold():
    bright = torch.full((10, 4, 4, 1), 200, dtype=torch.uint8)  # score +0.57
    dark = torch.full((10, 4, 4, 1), 20, dtype=torch.uint8)  # score -0.84
    rate = FoolRate(Brightness(), "bce")
    rate.add_real(torch.cat([bright[:8], dark[:2]]), None)  # 8 of 10 real called real
    rate.add_fake(torch.cat([bright[:3], dark[:7]]), None)  # 3 of 10 fakes called real
    result = rate.result()
    assert result["fool/real_accuracy"] == pytest.approx(0.8)
    assert result["fool/fooled"] == pytest.approx(0.3)
    assert result["fool/fake_accuracy"] == pytest.approx(0.7)
    assert result["fool/d_accuracy"] == pytest.approx(0.75)
    lsgan = FoolRate(Brightness(), "lsgan")  # threshold 0.5: +0.57 is still real, nothing else
    lsgan.add_real(bright, None)
    lsgan.add_fake(torch.full((4, 4, 4, 1), 180, dtype=torch.uint8), None)  # +0.41 < 0.5
    assert lsgan.result()["fool/fooled"] == 0.0
    wgan = FoolRate(Brightness(), "wgan-gp")  # threshold: the mean real score
    wgan.add_real(torch.cat([bright, dark]), None)  # mean -0.14
    wgan.add_fake(torch.full((4, 4, 4, 1), 128, dtype=torch.uint8), None)  # 0.0 > -0.14
    assert wgan.result()["fool/fooled"] == 1.0


# --- the Inception Score network -------------------------------------------------------------------

def test_missing_is_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inception_logits.IS_ENV_VAR, raising=False)
    with pytest.raises(InceptionWeightsError) as error:
        inception_logits.InceptionLogits()
    message = str(error.value)
    for expected in ("DISTGAN_INCEPTION_IS", str(tmp_path / "cache" / inception_logits.IS_WEIGHTS_FILE),
                     str(tmp_path / "torch" / "hub" / "checkpoints"), "--download", inception_logits.IS_WEIGHTS_URL,
                     "--features domain"):
        assert expected in message


@pytest.fixture(scope="module")
def random_is_weights(tmp_path_factory) -> Path:
    """torch-fidelity's inception-v3-compat with random weights (the real file is a 90 MB download)."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"])
    path = tmp_path_factory.mktemp("is") / inception_logits.IS_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return path


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/distgan-test-unpickled"),))


def test_is_weights_load_as_tensors_only_and_give_1008_logits(random_is_weights, tmp_path):
    with pytest.raises(InceptionWeightsError, match="sha256"):  # random weights are not the real file
        inception_logits.InceptionLogits(random_is_weights)
    net = inception_logits.InceptionLogits(random_is_weights, check_digest=False)
    logits = net(torch.randint(0, 256, (1, 28, 28, 1), dtype=torch.uint8))
    assert logits.shape == (1, 1008) and torch.isfinite(logits).all()
    evil = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": Payload()}, evil)
    Path("/tmp/distgan-test-unpickled").unlink(missing_ok=True)
    with pytest.raises(InceptionWeightsError, match="not loadable"):
        inception_logits.InceptionLogits(evil, check_digest=False)
    assert not Path("/tmp/distgan-test-unpickled").exists()


# --- a trained run: distgan-eval, the fool rate, evaluation during training ----------------------------

@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """8 steps of the house config with eval.every=4 on 64 images, against the test split."""
    data, cache = world
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(REPO / "configs/fashion_house.yaml",
                      [f"data.path={data}", f"run_dir={out}", "name=t", *TINY, "train.steps=8",
                       "eval.every=4", "eval.n=64", "eval.metrics=[fid,kid]"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTGAN_CACHE", str(cache))
        assert trainer.train(cfg) == "completed"
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return out / "t"


def test_eval_during_training_logs_fid_and_keeps_the_best_generator(run, world, cache_env, tmp_path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/fid" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert all(np.isfinite(r["eval/fid"]) and np.isfinite(r["eval/kid"]) for r in evals)
    assert evals[0]["eval/fid"] != evals[1]["eval/fid"]  # fixed latents: only the weights changed, and they did
    assert [r["step"] for r in rows if "loss/d" in r] == [2, 4, 6, 8]  # training lines untouched
    best, info = load_generator(run / "generator_best")
    best_row = min(evals, key=lambda r: r["eval/fid"])
    assert info["step"] == best_row["step"] and info["eval"]["n"] == 64
    assert info["eval"]["fid"] == pytest.approx(best_row["eval/fid"], rel=1e-5)
    assert info["eval"]["features"].startswith("domain-cnn-fashion-mnist")
    assert best(torch.randn(2, 64)).shape == (2, 1, 28, 28)
    assert (run / "losses.png").exists()  # the plot skips the evaluation lines
    # The logged figure is distgan-eval's FID of the kept generator on the training evaluator's latents (seed =
    # seed * 7919 + rank + 1 = 1) against the whole test split: other latents, another split or another extractor
    # behind the logged figure would not reproduce it. (Whether FID says anything about quality: test_metrics.)
    again = evaluate(TorchSource.from_dir(run / "generator_best"), world[0], n=64, seed=1, metrics=["fid"],
                     features="domain", progress=False, cache_dir=tmp_path / "ref")
    assert again["metrics"]["fid"] == pytest.approx(info["eval"]["fid"], rel=1e-6)


def test_eval_without_a_domain_classifier_fails_before_training(world, tmp_path, monkeypatch):
    data, _ = world
    monkeypatch.setenv("DISTGAN_CACHE", str(tmp_path / "empty"))
    cfg = load_config(REPO / "configs/fashion_house.yaml",
                      [f"data.path={data}", f"run_dir={tmp_path}", "name=t", *TINY, "eval.every=2"])
    with pytest.raises(ConfigError, match="eval.features=domain.*train-domain"):
        trainer.train(cfg)
    assert not (tmp_path / "t" / "checkpoints").exists()


def test_distgan_eval_cli_on_a_run(run, world, tmp_path):
    data, cache = world
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "distgan.metrics.cli", "--run", str(run), "--data", str(data), "--n", "120",
           "--metrics", "fid,kid,pr,is", "--features", "domain", "--device", "cpu", "--quiet",
           "--cache-dir", str(tmp_path / "ref"), "--out", str(out)]
    proc = subprocess.run(cmd, env=run_env(DISTGAN_CACHE=str(cache)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "features (" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr[-3000:]  # --quiet: no bars
    result = json.loads(out.read_text())
    figures = result["metrics"]
    for key in ("fid", "kid", "kid_std", "precision", "recall", "is", "is_std", "fool/d_accuracy", "fool/fooled"):
        assert key in figures and np.isfinite(figures[key]), key
    assert 0 <= figures["fool/fooled"] <= 1
    # The IS is that of the domain classifier's logits on the run's images (latent seed 0), computed here without
    # distgan-eval. (Whether IS says anything about quality: test_metrics, on a domain with learnable classes;
    # this world's labels are random, its generator 8 steps old.)
    logits = domain_features(cache / "domain" / "fashion-mnist", "logits")
    images = torch.cat([b.images for b in TorchSource.from_dir(run).batches(120, seed=0)])
    # These near-constant images score 1 + ~1e-9 (1.16e-9 here; IS on the classifier's 128 features instead of its
    # logits: 7.1e-9): the excess over 1 is what carries the figure, so that is what is compared.
    assert figures["is"] - 1 == pytest.approx(inception_score(logits(images)).mean - 1, rel=1e-3)
    assert result["step"] == 8 and result["n"] == 120 and result["n_real"] == 300 and result["split"] == "test"
    assert result["discriminator_checkpoint"].endswith("step-0000008")
    assert result["hardware"]["torch"] == torch.__version__
    header = proc.stdout.splitlines()[0].split()
    assert header == ["metric", "value", "features", "n", "time"] and "fool/fooled" in proc.stdout
    bad = subprocess.run(cmd[:-2] + ["--features", "inception", "--inception", str(tmp_path / "none.pt")],
                         env=run_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "none.pt: no such file" in bad.stderr


@pytest.mark.slow
def test_two_process_eval_gathers_features_from_both_ranks(world, tmp_path):
    """2 gloo ranks, 2 x 32 images gathered per evaluation; rank 0 alone logs and writes generator_best/."""
    data, cache = world
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", DISTGAN_CACHE=str(cache))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    train = [str(REPO / "distgan" / "train.py"), "--config", str(REPO / "configs/fashion_house.yaml"),
             f"data.path={data}", f"run_dir={tmp_path}", "name=t", *TINY, "train.steps=6", "eval.every=3",
             "eval.n=63"]
    proc = subprocess.run(launch + train, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/fid" in r] == [3, 6]  # one line each: rank 0 only
    _, info = load_generator(tmp_path / "t" / "generator_best")
    assert info["eval"]["n"] == 64  # ceil(63 / 2) per rank, gathered


def test_fid_during_a_bf16_run_equals_distgan_eval_on_the_same_weights(world, tmp_path, monkeypatch):
    """Training-time evaluation runs the EMA generator in fp32, like the exported model and distgan-eval."""
    from accelerate.state import AcceleratorState

    from distgan.metrics.generated import TorchSource

    data, cache = world
    monkeypatch.setenv("DISTGAN_CACHE", str(cache))
    cfg = load_config(REPO / "configs/fashion_house.yaml",
                      [f"data.path={data}", f"run_dir={tmp_path}", "name=t", *TINY, "train.steps=4",
                       "train.mixed_precision=bf16", "eval.every=4", "eval.n=64"])
    try:
        assert trainer.train(cfg) == "completed"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    logged = [json.loads(line) for line in (tmp_path / "t/metrics.jsonl").read_text().splitlines()]
    during = [r["eval/fid"] for r in logged if "eval/fid" in r]
    # Rank 0 of one process draws its latents with seed cfg.seed * 7919 + 1 (metrics/during_training.py).
    result = evaluate(TorchSource.from_dir(tmp_path / "t/generator_best"), data, n=64, features="domain",
                      seed=1, batch_size=500, progress=False)
    assert during == [pytest.approx(result["metrics"]["fid"], rel=1e-6)]
